"""Running the platform as supervised local processes: config rendering and the `spiralctl` commands."""
