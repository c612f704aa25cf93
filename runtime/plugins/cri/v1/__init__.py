"""Generated CRI v1 protocol stubs (scripts/gen-cri.sh); see api.proto."""
