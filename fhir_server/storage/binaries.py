"""Large Binary content in GridFS, streamed in and out.

Binary resources above `binary_inline_max_bytes` keep their bytes out of the resource document
(MongoDB documents stop at 16 MiB, and streaming beats loading whole documents). Small ones keep
`data` inline, which makes the common case one document read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase

CHUNK = 255 * 1024  # GridFS default chunk size


class BinaryStore:
    def __init__(self, db: AsyncDatabase, bucket: str = "binary_content") -> None:
        self._bucket = AsyncGridFSBucket(db, bucket_name=bucket, chunk_size_bytes=CHUNK)

    async def ensure_indexes(self) -> None:
        """GridFS creates its indexes on first write; nothing to do up front."""

    async def put(self, content: bytes, session=None) -> object:
        return await self._bucket.upload_from_stream("content", content, session=session)

    async def delete(self, file_id: object) -> None:
        try:
            await self._bucket.delete(file_id)
        except NoFile:
            pass  # already gone (a rollback or a purge that ran before)

    def stream(self, file_id: object, session=None) -> AsyncIterator[bytes]:
        return gridfs_chunks(self._bucket, file_id, session)


async def gridfs_chunks(bucket: AsyncGridFSBucket, file_id: object, session=None) -> AsyncIterator[bytes]:
    """A GridFS file's content, one stored chunk at a time (memory bounded by the chunk size)."""
    grid_out = await bucket.open_download_stream(file_id, session=session)
    try:
        while True:
            chunk = await grid_out.readchunk()
            if not chunk:
                break
            yield chunk
    finally:
        await grid_out.close()
