#!/usr/bin/env bash
# The main job on a fresh machine: installs the inspector (no torch), starts an MQTT
# broker for the run, and inspects the bundled clip of real bottles with the bundled
# CPU model. Alerts print as they arrive over MQTT; overlays land in riad-demo/.
# Extra arguments go to 'riad-edge demo' (e.g. --view-port 8080 for the live view).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh edge
. .venv/bin/activate
# Without mosquitto (not root, or no apt), a pure-Python broker stands in.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || python -m pip install -q amqtt
exec riad-edge demo "$@"
