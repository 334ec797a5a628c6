"""The bucket, for everything but models: uploaded inputs and each run's prepared data.

training_input/<name>.h5, training_input/parameters.json   what the user dropped
runs/<run_id>/train.npz, runs/<run_id>/test.npz            validated arrays, no pickle
"""

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import NotFound, StateError, translate


def data_key(run_id: str, split: str) -> str:
    return f"runs/{run_id}/{split}.npz"


@dataclass(frozen=True)
class ObjectVersion:
    """One entry of ListObjectVersions: a version of a key, or a delete marker (`deleted`)."""

    version_id: str
    last_modified: datetime  # to the second, as S3 keeps it
    deleted: bool
    latest: bool  # the key's current entry


class ObjectStore(LazyClient):
    service = "s3"

    def __init__(self, bucket: str, s3: Any = None) -> None:
        super().__init__(s3)
        self.bucket = bucket

    def head(self, key: str, version_id: str | None = None) -> dict[str, Any]:
        kwargs = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return dict(self.client.head_object(**kwargs))
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"s3://{self.bucket}/{key}") from e

    def get(self, key: str, max_bytes: int, version_id: str | None = None) -> bytes:
        """An object's bytes; `StateError` if it is larger than `max_bytes`."""
        kwargs = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            out = self.client.get_object(**kwargs)
            size = int(out.get("ContentLength", 0))
            if size > max_bytes:
                out["Body"].close()
                raise StateError(
                    f"s3://{self.bucket}/{key} is {size} bytes, larger than the limit of "
                    f"{max_bytes} bytes"
                )
            data = out["Body"].read(max_bytes + 1)
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"read s3://{self.bucket}/{key}") from e
        if len(data) > max_bytes:
            raise StateError(f"s3://{self.bucket}/{key} is larger than {max_bytes} bytes")
        return bytes(data)

    def get_optional(self, key: str, max_bytes: int) -> bytes | None:
        try:
            return self.get(key, max_bytes)
        except NotFound:
            return None

    def versions(self, key: str) -> list[ObjectVersion]:
        """Every version and delete marker of exactly `key` (not of the keys it is a prefix
        of). S3 lists a key's entries newest first, but its versions and its delete markers
        apart: here the versions come first, then the markers, each kind in S3's order, page
        by page (entries of the same second are ordered only within their kind)."""
        out: list[ObjectVersion] = []
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for kind, deleted in (("Versions", False), ("DeleteMarkers", True)):
                    out += [
                        ObjectVersion(
                            version_id=str(v["VersionId"]),
                            last_modified=v["LastModified"],
                            deleted=deleted,
                            latest=bool(v.get("IsLatest")),
                        )
                        for v in page.get(kind, [])
                        if v.get("Key") == key
                    ]
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"list the versions of s3://{self.bucket}/{key}") from e
        return out

    def put(
        self, key: str, body: bytes, content_type: str = "application/octet-stream"
    ) -> str | None:
        """Write an object; the version S3 gave it (None in a bucket without versioning)."""
        try:
            out = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"write s3://{self.bucket}/{key}") from e
        version = out.get("VersionId")
        return str(version) if version and version != "null" else None

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        self.put(key, buf.getvalue())

    def get_arrays(self, key: str, max_bytes: int = 1 << 30) -> dict[str, np.ndarray]:
        data = self.get(key, max_bytes)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise StateError(f"s3://{self.bucket}/{key} is not a readable array file: {e}") from e
