"""Libraries that are not plugins and that several plugins use (as containerd keeps ``pkg/``)."""
