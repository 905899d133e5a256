#!/usr/bin/env bash
# Regenerates the committed *_pb2.py / *_pb2_grpc.py from the .proto files here (grpcio-tools).
# Proto paths are rooted at the repository so the generated imports read `from client.tfserving import ...`.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The gencode must not be newer than the protobuf runtime it meets: the committed modules come from
# grpcio-tools 1.73 (protobuf 6.31 gencode), which loads on protobuf 6.31+ and 7.x alike (some
# tritonclient releases pin protobuf<7). Point PYTHON at an interpreter with such a grpcio-tools.
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
  client/tfserving/types.proto client/tfserving/tensor_shape.proto client/tfserving/tensor.proto \
  client/tfserving/model.proto client/tfserving/predict.proto client/tfserving/prediction_service.proto
# protoc emits an empty *_pb2_grpc.py for files without services; keep only the one with a service.
for f in types tensor_shape tensor model predict; do rm -f "client/tfserving/${f}_pb2_grpc.py"; done
