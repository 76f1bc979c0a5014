"""A real S3-compatible server for the storage tests: moto in server mode (``moto.server.ThreadedMotoServer``, from
PyPI), on 127.0.0.1 and a free port, in this process. ``env`` is what a client (this process, a CLI subprocess, a
Ray node) needs to reach it: test credentials, the endpoint (pyarrow reads ``AWS_ENDPOINT_URL``), and no EC2
metadata lookups, so nothing is sent anywhere but 127.0.0.1."""
from __future__ import annotations

import logging
import os

from loopback import free_ports


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = free_ports(1)[0]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
                    "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> S3Server:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def bucket(self, name: str) -> str:
        """Create a bucket; its URI."""
        import pyarrow.fs as pafs

        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=f"127.0.0.1:{self.port}", allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"


def set_env(env: dict) -> dict:
    """Put ``env`` in os.environ (this process's pyarrow reads it); the previous values, for ``restore``."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
