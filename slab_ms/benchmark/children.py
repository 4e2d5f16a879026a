"""Every model runs in a child process of its own, spoken to in JSON lines: the parent's side (``Child``), the
child's loop (``serve``) and the child's peak memory. Standard library only: a child may run under another
interpreter (a separate torch environment) that holds neither MindSpore nor slab_ms."""
import json
import os
import resource
import subprocess
import sys


def peak_rss_mb():
    """This process's peak resident memory in MB: Linux's VmHWM, which starts afresh in a new program (its
    ``ru_maxrss`` starts at the parent's peak, since it survives exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Child:
    """One model in its own process: ``command`` (an interpreter and a module or script) is started with ``spec``
    (JSON) as its last argument; its first answer, "ready", carries a value kept as ``ready``."""

    def __init__(self, command, spec, env=None):
        self.process = subprocess.Popen(list(command) + [json.dumps(spec)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._answer("ready")

    def _answer(self, expected):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark child {' '.join(self.process.args[:-1])} ended "
                               f"(exit status {self.process.wait()})")
        kind, value = json.loads(line)
        if kind == "error":
            raise RuntimeError(value)
        if kind != expected:
            raise RuntimeError(f"benchmark child answered {kind!r}, expected {expected!r}")
        return value

    def ask(self, kind, batch_size=None):
        """Seconds of one "time" / "train" request, a "profile", the "peak" memory in MB so far, or the "threads"
        a PyTorch child uses at ``batch_size``."""
        self.process.stdin.write(json.dumps([kind, batch_size]) + "\n")
        self.process.stdin.flush()
        return self._answer({"profile": "profile", "peak": "peak_mb", "threads": "threads"}.get(kind, "seconds"))

    def stop(self):
        """Ends the child; returns its peak resident memory in MB."""
        peak = self.ask("peak")
        self.process.stdin.close()
        self.process.wait(timeout=60)
        return peak

    def kill(self):
        self.process.kill()
        self.process.wait()


def stop_all(children):
    """Ends every child of ``children``; one that can no longer answer (a closed pipe, an unreadable line) is
    killed instead."""
    for child in children:
        try:
            child.stop()
        except (EOFError, OSError, RuntimeError, ValueError):
            child.kill()


def serve(build):
    """The child's loop. ``build()`` returns (the "ready" value, ``answer(kind, batch_size) -> (kind, value)``);
    "peak" is answered here; the loop ends when the parent closes stdin. The answers go to the original stdout,
    which is kept for them: whatever the libraries print goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(kind, value):
        answers.write(json.dumps([kind, value]) + "\n")
        answers.flush()

    try:
        ready, answer = build()
        send("ready", ready)
        for line in sys.stdin:
            kind, batch_size = json.loads(line)
            send(*(("peak_mb", peak_rss_mb()) if kind == "peak" else answer(kind, batch_size)))
    except Exception as err:  # noqa: BLE001  (reported to the parent instead of dying silently)
        send("error", f"{type(err).__name__}: {err}")
