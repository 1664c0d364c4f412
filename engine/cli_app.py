"""`engine app [--host 127.0.0.1] [--port 7860] [--share] [--output-dir DIR] [--session-ttl MIN] [--max-queue N]
[--job-timeout MIN] [--model ID] [--allow-local-models]`: the Gradio web app (apps/gradio_app.py), bound to
localhost by default. Ctrl-C (or SIGTERM) stops the running jobs and waits for their workers to save a checkpoint."""

import os
import sys
from dataclasses import dataclass

from apps.jobs import Limits
from engine.cli import UsageError, parse_command

USAGE_ERROR = 2


@dataclass
class AppCommand:
    """Serve the Distillery web app (Gradio)."""

    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only)."""
    port: int = 7860
    """Port to serve on."""
    share: bool = False
    """Also open a public gradio.live link."""
    output_dir: str | None = None
    """Where session folders go (None: <tmp>/distillery-app)."""
    session_ttl: float = Limits.session_ttl_s / 60
    """Minutes after its last use before a session's files are deleted."""
    max_queue: int = Limits.max_queue
    """Jobs allowed to wait at once."""
    job_timeout: float = Limits.job_timeout_s / 60
    """Minutes a job may run before it is stopped and its worker ended."""
    model: str | None = None
    """Default diffusion model id shown in the form."""
    allow_local_models: bool = False
    """Let users name model folders on this machine (off by default)."""

    def __post_init__(self) -> None:
        for name, ok, rule in (("session_ttl", 0 < self.session_ttl < 1e6, "> 0"),
                               ("job_timeout", 0 < self.job_timeout < 1e6, "> 0"),
                               ("max_queue", 1 <= self.max_queue <= 10_000, "in 1..10000"),
                               ("port", 0 < self.port < 65536, "in 1..65535")):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_command(AppCommand, list(sys.argv[1:] if argv is None else argv), "engine app",
                             AppCommand.__doc__)
    except UsageError as e:
        print(f"engine app: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as e:  # --help
        return int(e.code or 0) and USAGE_ERROR
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('engine app: error: the app needs gradio: pip install -e ".[app]"', file=sys.stderr)
        return USAGE_ERROR
    from apps.gradio_app import DEFAULT_MODEL, App
    from apps.jobs import Limits, RootInUse

    limits = Limits(max_queue=args.max_queue, max_queue_per_client=max(1, args.max_queue // 4),
                    session_ttl_s=args.session_ttl * 60, job_timeout_s=args.job_timeout * 60)
    try:
        app = App(output_dir=args.output_dir, limits=limits, model_id=args.model or DEFAULT_MODEL,
                  allow_local_models=args.allow_local_models)
    except (RootInUse, OSError) as e:
        print(f"engine app: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    print(f"engine app: serving on http://{args.host}:{args.port} (session files in {app.output_dir}, "
          f"kept {args.session_ttl:g} min after last use)", file=sys.stderr)
    import signal

    def terminate(signum, frame):  # SIGTERM (a service manager) shuts down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        app.launch(host=args.host, port=args.port, share=args.share, block=True)
    except OSError as e:
        print(f"engine app: error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the workers save; a second signal must not cut it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        running = len(app.manager.running)
        if running:
            print(f"engine app: stopping {running} running job(s); waiting for their checkpoints "
                  f"(up to {app.limits.stop_grace_s:g} s)", file=sys.stderr)
        app.manager.close(wait=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
