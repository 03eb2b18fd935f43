"""A read-only OCI registry for the tests: serves the images of a `docker save` archive
under any repository name and tag, over plain HTTP on 127.0.0.1 (no registry can be pulled
or reached on the test machines, so the pull path is tested against this one).

    python3 registry.py ARCHIVE      # prints the port it listens on, then serves

Only what a pull needs: `GET /v2/`, `GET|HEAD /v2/<name>/manifests/<tag or digest>` and
`GET|HEAD /v2/<name>/blobs/<digest>`. The manifest is built from the archive's
`manifest.json` (the first image): its config and uncompressed layers, as OCI media types.
"""

import hashlib
import http.server
import json
import re
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def load(archive):
    """The blobs (digest -> bytes) and the manifest's digest."""
    with tarfile.open(archive) as tar:
        files = {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}
    image = json.loads(files["manifest.json"])[0]
    blobs = {}

    def add(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = add(files[image["Config"]], "application/vnd.oci.image.config.v1+json")
    layers = [add(files[layer], "application/vnd.oci.image.layer.v1.tar") for layer in image["Layers"]]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})
    return blobs, add(manifest.encode(), OCI_MANIFEST)["digest"]


def serve(archive):
    blobs, manifest_digest = load(archive)
    route = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$")

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, body):
            if self.path in ("/v2/", "/v2"):
                return self.reply(200, b"{}", "application/json", None, body)
            match = route.match(self.path)
            if not match:
                return self.reply(404, b"{}", "application/json", None, body)
            reference = match["reference"]
            if match["kind"] == "manifests" and not reference.startswith("sha256:"):
                reference = manifest_digest  # every tag is the archive's image
            data = blobs.get(reference)
            if data is None:
                return self.reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', "application/json", None, body)
            media_type = OCI_MANIFEST if reference == manifest_digest else "application/octet-stream"
            return self.reply(200, data, media_type, reference, body)

        def reply(self, status, data, media_type, digest, body):
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(data)))
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):
            self.answer(True)

        def do_HEAD(self):
            self.answer(False)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1])
