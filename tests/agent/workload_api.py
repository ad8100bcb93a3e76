"""A SPIFFE Workload API server on a Unix socket (gRPC, the ``spiffe`` package's own protobufs),
standing in for a SPIRE agent: it streams X.509-SVIDs made by a ``DevCA`` and pushes a new one on
``rotate`` (SPIFFE Workload API §5.2: the stream sends an update whenever an SVID changes)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tether.identity.dev_x509 import DevCA, Issued

__all__ = ["WorkloadApi"]


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, api: WorkloadApi) -> None:
        self.api = api

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        sent = -1
        while context.is_active():
            with self.api.changed:
                if self.api.version == sent:
                    self.api.changed.wait(timeout=0.2)
                    continue
                sent, response = self.api.version, self.api.response()
            yield response


class WorkloadApi:
    """``with WorkloadApi(tmp, ca, spiffe_id) as api:`` — ``api.socket`` for ``SPIFFE_ENDPOINT_SOCKET``."""

    def __init__(self, directory: Path, ca: DevCA, spiffe_id: str) -> None:
        self.ca = ca
        self.spiffe_id = spiffe_id
        self.path = directory / "agent.sock"
        self.socket = f"unix://{self.path}"
        self.changed = threading.Condition()
        self.version = 0
        self.svid: Issued = ca.issue_svid(spiffe_id)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"unix:{self.path}")

    def response(self) -> Any:
        key = self.svid.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        bundle = self.ca.certificate.public_bytes(serialization.Encoding.DER)
        svid = workload_pb2.X509SVID(spiffe_id=self.spiffe_id, x509_svid=self.svid.der, x509_svid_key=key, bundle=bundle)
        return workload_pb2.X509SVIDResponse(svids=[svid])

    def rotate(self) -> Issued:
        with self.changed:
            self.svid = self.ca.issue_svid(self.spiffe_id)
            self.version += 1
            self.changed.notify_all()
        return self.svid

    def __enter__(self) -> WorkloadApi:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=0)
