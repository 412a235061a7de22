"""S3 backend (any S3-compatible server) through aiobotocore. Objects are keyed
`attachments/<id>`; path-style addressing when `storage.s3.path_style` (MinIO, moto, Garage).
Files up to PART_BYTES go up in one PUT; larger ones as a multipart upload, one part in memory
at a time. Reads redirect to a presigned GET (the route decides), or stream ranged GETs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from mdsync.config import S3Settings

PART_BYTES = 8 * 1024 * 1024
PREFIX = "attachments/"


class S3Storage:
    kind = "s3"

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.bucket = settings.bucket
        self._client = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def client(self):
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session

                    s = self.settings
                    config = AioConfig(s3={"addressing_style": "path" if s.path_style else "auto"},
                                       connect_timeout=10, read_timeout=60, retries={"max_attempts": 3})
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(get_session().create_client(
                        "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=s.access_key_id,
                        aws_secret_access_key=s.secret_access_key, config=config))
                    self._stack = stack
        return self._client

    def object_key(self, key: str) -> str:
        return PREFIX + key

    async def put(self, key: str, source: Path) -> None:
        client = await self.client()
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            if size <= PART_BYTES:
                body = await asyncio.to_thread(f.read)
                await client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=body)
                return
            upload = await client.create_multipart_upload(Bucket=self.bucket, Key=self.object_key(key))
            upload_id, parts = upload["UploadId"], []
            try:
                number = 1
                while chunk := await asyncio.to_thread(f.read, PART_BYTES):
                    part = await client.upload_part(Bucket=self.bucket, Key=self.object_key(key), UploadId=upload_id,
                                                    PartNumber=number, Body=chunk)
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
                    number += 1
                await client.complete_multipart_upload(Bucket=self.bucket, Key=self.object_key(key),
                                                       UploadId=upload_id, MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):
                    await client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(key),
                                                        UploadId=upload_id)
                raise
        os.unlink(source)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        client = await self.client()
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        response = await client.get_object(Bucket=self.bucket, Key=self.object_key(key), **extra)
        async with response["Body"] as stream:
            while chunk := await stream.read(256 * 1024):
                yield chunk

    async def delete(self, key: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    async def url(self, key: str, *, name: str, content_type: str, ttl: int) -> str | None:
        client = await self.client()
        disposition = f"inline; filename*=UTF-8''{quote(name, safe='')}"
        return await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key),
                                  "ResponseContentType": content_type,
                                  "ResponseContentDisposition": disposition},
            ExpiresIn=ttl)

    async def exists(self, key: str) -> bool:
        client = await self.client()
        try:
            await client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def check(self) -> dict:
        try:
            client = await self.client()
            await asyncio.wait_for(client.head_bucket(Bucket=self.bucket), 10)
        except Exception as exc:  # any failure is the answer
            return {"ok": False, "backend": "s3", "error": f"bucket {self.bucket}: {exc}"}
        return {"ok": True, "backend": "s3"}

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack, self._client = None, None
