"""A local OpenAI-compatible server with vLLM's runtime LoRA endpoints, for the serving tests:
``GET /v1/models``, ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` (the adapter
directory must exist under one of its ``mounts``, the server's view of the filesystem),
``POST /v1/chat/completions`` / ``/v1/completions`` (404 for a model it has not loaded, like vLLM).
It fails on purpose: ``fail_loads`` answers the next loads with 500, ``lie_about_loads`` answers
200 without loading."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeVLLM:
    def __init__(self, base_model: str = "base", mounts: dict[str, Path] | None = None):
        self.base_model = base_model
        self.mounts = {k.rstrip("/"): Path(v) for k, v in (mounts or {}).items()}  # server path -> real dir
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[str, str, dict | None]] = []
        self.fail_loads = 0
        self.lie_about_loads = False
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _real(self, path: str) -> Path | None:
        for prefix, real in self.mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                return real / path[len(prefix):].lstrip("/")
        return None

    def _send(self, h, status: int, payload) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        path = h.path
        with self._lock:
            self.calls.append((method, path, body))
        if method == "GET" and path == "/v1/models":
            data = [{"id": self.base_model, "object": "model", "root": self.base_model, "parent": None}]
            data += [{"id": n, "object": "model", "root": p, "parent": self.base_model} for n, p in self.loras.items()]
            return self._send(h, 200, {"object": "list", "data": data})
        if path == "/v1/load_lora_adapter":
            name, lora_path = body.get("lora_name"), body.get("lora_path")
            with self._lock:
                if self.fail_loads:
                    self.fail_loads -= 1
                    return self._send(h, 500, {"error": {"message": "CUDA out of memory (on purpose)"}})
            if name in self.loras:
                return self._send(h, 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
            real = self._real(lora_path)
            if real is None or not (real / "adapter_config.json").is_file():
                return self._send(h, 400, {"error": {"message": f"No adapter found for {lora_path}"}})
            if not self.lie_about_loads:
                self.loras[name] = lora_path
            return self._send(h, 200, f"Success: LoRA adapter '{name}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            name = body.get("lora_name")
            if self.loras.pop(name, None) is None:
                return self._send(h, 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}})
            return self._send(h, 200, f"Success: LoRA adapter '{name}' removed successfully.")
        if path in ("/v1/chat/completions", "/v1/completions"):
            model = body.get("model")
            if model != self.base_model and model not in self.loras:
                return self._send(h, 404, {"error": {"message": f"The model `{model}` does not exist."}})
            text = f"您好，这是{model}的回复。"
            choice = {"message": {"role": "assistant", "content": text}} if path.endswith("chat/completions") \
                else {"text": text}
            return self._send(h, 200, {"choices": [{"index": 0, **choice}]})
        return self._send(h, 404, {"error": {"message": f"no route {path}"}})
