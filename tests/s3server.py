"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1 (never 0.0.0.0).

    with S3Server() as s3:
        s3.create_bucket("mdsync-replica")
        url = s3.replica_url("mdsync-replica", "db")   # litestream's URL form

Runs in a subprocess (`moto_server -H 127.0.0.1 -p PORT`) so that litestream, mdsync serve and the
test all talk to it over real HTTP; stopped by its pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import ChildProcess, free_port, wait_for_port

ACCESS_KEY = "mdsync-test-key"
SECRET_KEY = "mdsync-test-secret"


class S3Server(ChildProcess):
    what = "moto server"

    def __init__(self, log_dir: Path | None = None):
        super().__init__()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir

    def start(self, timeout: float = 20.0) -> S3Server:
        moto = Path(sys.executable).parent / "moto_server"
        cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        if self.log_dir:
            with open(self.log_dir / "moto.log", "w") as out:
                self.launch([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], env, out)
        else:
            self.launch([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], env, subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_for_port(self.port, self.proc, self.what, time.monotonic() + timeout)
        except RuntimeError:
            self.stop()
            raise

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def replica_url(self, bucket: str, path: str) -> str:
        return f"s3://{bucket}/{path}?endpoint={self.endpoint}&region=us-east-1&forcePathStyle=true"

    @staticmethod
    def credentials() -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
