"""Pack one static binary as a single-layer OCI image archive (oci-archive tar), the form
`ctr images import` reads; used for the pause image (no registry here).

    python3 oci_archive.py --binary pause --name kubetune.local/pause:1 --out pause.oci.tar
"""

import argparse
import gzip
import hashlib
import io
import json
import tarfile


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True, help="image reference, e.g. kubetune.local/pause:1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    binary = open(args.binary, "rb").read()
    entry = "/" + args.binary.rsplit("/", 1)[-1]

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as lt:
        info = tarfile.TarInfo(entry.lstrip("/"))
        info.size, info.mode = len(binary), 0o755
        lt.addfile(info, io.BytesIO(binary))
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer_gz = gzip.compress(layer_tar.getvalue(), mtime=0)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entry], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        cfg = _blob(tar, _json(config))
        layer = _blob(tar, layer_gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
        }
        man = _blob(tar, _json(manifest))
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **man,
                    "annotations": {
                        "io.containerd.image.name": args.name,
                        "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        for name, data in (("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                           ("index.json", _json(index))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
