"""Where results go: MQTT events and their lifecycle, commands from the line, Home Assistant discovery."""
