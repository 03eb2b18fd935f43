"""Checks Marina's gRPC ports with Python's gRPC (another ecosystem than Marina's own):
grpc.health.v1 says SERVING, and server reflection lists the expected services.
Usage: python grpc_check.py [--tls-dir DIR] host:port=service,service host:port=service ...
With --tls-dir, over mutual TLS as the operator of DIR (ca.pem, operator.pem, operator-key.pem).
Prints one line per port; exits non-zero on the first failure."""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def channel_to(address, tls_dir):
    if tls_dir is None:
        return grpc.insecure_channel(address)
    read = lambda name: open(f"{tls_dir}/{name}", "rb").read()
    credentials = grpc.ssl_channel_credentials(read("ca.pem"), read("operator-key.pem"), read("operator.pem"))
    return grpc.secure_channel(address, credentials)


def check(address, expected, tls_dir):
    with channel_to(address, tls_dir) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"{address}: health {status}"
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = [service.name for response in responses for service in response.list_services_response.service]
        missing = [name for name in expected if name not in names]
        assert not missing, f"{address}: {missing} not in {names}"
        print(address, "SERVING", ",".join(sorted(names)))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    tls_dir = None
    if arguments[:1] == ["--tls-dir"]:
        tls_dir, arguments = arguments[1], arguments[2:]
    for argument in arguments:
        address, services = argument.split("=")
        check(address, services.split(","), tls_dir)
