"""`fedge bundle`: one offline artefact to flash onto a device.

A tar.gz with the wheels for the target, fedge itself, the app, its config, the device
key, a systemd unit and `install.sh`, which installs all of it with no network. See
docs/raspberry-pi.md ("An offline bundle").
"""
