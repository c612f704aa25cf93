"""The benchmark harness: images, daemons, fresh filesystems, measurements, reports."""
