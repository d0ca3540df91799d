"""An inspection station: many cameras in one process, free-running or triggered.

    config.py     line.yaml -> StationConfig (cameras: source, model, threshold, mode, ROI)
    batching.py   SharedBackend: cameras with one model share it; frames ready together are one batch
    trigger.py    trigger payloads and the MQTT subscription that receives them
    verdict.py    the verdict per part (OK / NOK / error) and its JSON
    triggered.py  TriggeredCamera: trigger -> next frame(s) -> verdict, errors explicit
    station.py    Station: wires cameras, backends and publishers; `riad-edge run --config`
"""
