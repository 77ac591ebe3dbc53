"""The patient's human copy as a ZIP archive (issue 11, item 3), written with bounded memory.

The DMP promises a copy "usable without any software of ours": the archive holds the record as a
FHIR Bundle (`record.json`, for another system), every document's attachment as its own file
under its original name and type (`documents/`), the access history (`access-history.json`), an
`index.html` a person opens offline (no script, no network: inline style only), and the SHA-256
of every file (`SHA256SUMS`, the `sha256sum -c` format, and `manifest.json`).

The archive is written into a spooled temporary file (memory up to `SPOOL_BYTES`, then disk) one
chunk at a time: attachments are stored, not deflated (PDFs and images are already compressed),
and their chunks are copied from GridFS as they come, so memory does not grow with the record.
File writes and hashing run in a worker thread (asyncio.to_thread), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import mimetypes
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

SPOOL_BYTES = 1 << 20
READ_CHUNK = 1 << 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, fallback: str) -> str:
    """A file name that is the same on every system: ASCII letters, digits, `._ -`; no path."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", folded.replace("/", "_").replace("\\", "_")).strip(" ._")
    return cleaned[:100] or fallback


def extension_for(content_type: str | None) -> str:
    base = (content_type or "").split(";")[0].strip().lower()
    return {"text/plain": ".txt", "application/pdf": ".pdf", "image/jpeg": ".jpg",
            "application/fhir+json": ".json", "application/json": ".json"}.get(
        base, mimetypes.guess_extension(base) or ".bin")


@dataclass
class Member:
    path: str
    sha256: str
    size: int
    content_type: str


@dataclass
class Archive:
    """A ZIP being written; `add_*` in any order, then `finish` and `stream`."""

    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed by stream()
        self._zip = zipfile.ZipFile(self._file, "w", allowZip64=True)
        self._names: set[str] = set()

    def unique(self, path: str) -> str:
        stem, dot, ext = path.rpartition(".")
        candidate, n = path, 1
        while candidate in self._names:
            n += 1
            candidate = f"{stem}-{n}.{ext}" if dot else f"{path}-{n}"
        self._names.add(candidate)
        return candidate

    async def add_bytes(self, path: str, data: bytes, content_type: str, compress: bool = True) -> Member:
        return await self.add_chunks(path, _one(data), content_type, compress)

    async def add_chunks(self, path: str, chunks: AsyncIterator[bytes], content_type: str,
                         compress: bool = False) -> Member:
        path = self.unique(path)
        info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        digest = hashlib.sha256()
        size = 0
        out = await asyncio.to_thread(self._zip.open, info, "w", force_zip64=True)
        try:
            async for chunk in chunks:
                if chunk:
                    size += len(chunk)
                    await asyncio.to_thread(_write, out, digest, chunk)
        finally:
            await asyncio.to_thread(out.close)
        member = Member(path, digest.hexdigest(), size, content_type)
        self.members.append(member)
        return member

    async def finish(self) -> None:
        """Add the hash lists and close the ZIP directory."""
        sums = "".join(f"{m.sha256}  {m.path}\n" for m in self.members).encode()
        manifest = orjson.dumps({"files": [{"path": m.path, "sha256": m.sha256, "size": m.size,
                                            "contentType": m.content_type} for m in self.members]},
                                option=orjson.OPT_INDENT_2)
        await self.add_bytes("manifest.json", manifest, "application/json")
        await self.add_bytes("SHA256SUMS", sums, "text/plain")
        await asyncio.to_thread(self._zip.close)

    def size(self) -> int:
        return self._file.tell()

    async def stream(self) -> AsyncIterator[bytes]:
        """The finished archive, in chunks; the temporary file is closed at the end."""
        try:
            await asyncio.to_thread(self._file.seek, 0)
            while True:
                chunk = await asyncio.to_thread(self._file.read, READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            self._file.close()

    def discard(self) -> None:
        self._file.close()


def _write(out, digest, chunk: bytes) -> None:
    digest.update(chunk)
    out.write(chunk)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- index.html -----------------------------------------------------------------------------------

STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
         "table{border-collapse:collapse;width:100%;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .5em;"
         "text-align:left;vertical-align:top}th{background:#f2f2f2}h2{margin-top:2em}.small{color:#666;font-size:.9em}")


def _e(value) -> str:
    return html.escape(str(value) if value is not None else "", quote=True)


def index_html(patient: dict, documents: list[dict], history: list[dict], counts: dict[str, int],
               generated: str) -> str:
    """A self-contained page: who the record is about, the documents (newest first, by type), the
    access history, what the archive holds. `documents`: {date, type, title, author, files:
    [(path, name)]}; `history`: {when, who, what, why, outcome}."""
    name = " ".join(" ".join(n.get("given", [])) + " " + n.get("family", "") for n in patient.get("name", [])[:1])
    ids = ", ".join(f"{i.get('value', '')}" for i in patient.get("identifier", []) if i.get("value"))
    rows = []
    for d in documents:
        links = "<br>".join(f'<a href="{_e(path)}">{_e(label)}</a>' for path, label in d["files"]) or "—"
        rows.append(f"<tr><td>{_e(d['date'])}</td><td>{_e(d['type'])}</td><td>{_e(d['title'])}</td>"
                    f"<td>{_e(d['author'])}</td><td>{links}</td></tr>")
    hist = [f"<tr><td>{_e(h['when'])}</td><td>{_e(h['who'])}</td><td>{_e(h['what'])}</td><td>{_e(h['why'])}</td>"
            f"<td>{_e(h['outcome'])}</td></tr>" for h in history]
    held = "".join(f"<li>{_e(t)}: {n}</li>" for t, n in sorted(counts.items()))
    return f"""<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>Dossier médical — {_e(name.strip())}</title>
<style>{STYLE}</style></head><body>
<h1>Dossier médical partagé — copie / Shared medical record — copy</h1>
<p><strong>{_e(name.strip()) or "—"}</strong> {_e(patient.get("birthDate", ""))}<br>
<span class="small">Identifiants / identifiers: {_e(ids) or "—"} · copie du / copy of {_e(generated)}</span></p>
<h2>Documents</h2>
<table><thead><tr><th>Date</th><th>Type</th><th>Titre / Title</th><th>Auteur / Author</th><th>Fichiers / Files</th>
</tr></thead><tbody>
{"".join(rows) or '<tr><td colspan="5">Aucun document / No document</td></tr>'}
</tbody></table>
<h2>Historique des accès / Access history</h2>
<table><thead><tr><th>Quand / When</th><th>Qui / Who</th><th>Quoi / What</th><th>Pourquoi / Why</th>
<th>Résultat / Outcome</th></tr></thead><tbody>
{"".join(hist) or '<tr><td colspan="5">—</td></tr>'}
</tbody></table>
<h2>Contenu de l'archive / What this archive holds</h2>
<ul><li><a href="record.json">record.json</a>: le dossier au format FHIR R4 (Bundle) / the record as a FHIR R4
Bundle</li><li><a href="access-history.json">access-history.json</a>: AuditEvents</li>
<li><a href="SHA256SUMS">SHA256SUMS</a>, <a href="manifest.json">manifest.json</a>: empreintes SHA-256 / SHA-256
hashes</li></ul>
<ul>{held}</ul>
</body></html>
"""
