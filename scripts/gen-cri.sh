#!/usr/bin/env bash
# Regenerates the CRI v1 Python stubs (runtime/plugins/cri/v1/api_pb2*.py{,i})
# from runtime/plugins/cri/v1/api.proto with grpcio-tools (the test extra).
# The proto path is given from the repository root so the stubs import each
# other as runtime.plugins.cri.v1.api_pb2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m grpc_tools.protoc -I. \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    runtime/plugins/cri/v1/api.proto
