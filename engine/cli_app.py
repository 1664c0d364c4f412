"""`engine app [--host 127.0.0.1] [--port 7860] [--share] [--output-dir DIR] [--session-ttl MIN] [--max-queue N]
[--job-timeout MIN] [--model ID] [--allow-local-models]`: the Gradio web app (apps/gradio_app.py), bound to
localhost by default. Ctrl-C (or SIGTERM) stops the running jobs and waits for their workers to save a checkpoint."""

import os
import sys

from engine.cli import OneLineParser

USAGE_ERROR = 2


def _parser() -> OneLineParser:
    p = OneLineParser(prog="engine app", description="Serve the Distillery web app (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--output-dir", default=None, help="where session folders go (default: <tmp>/distillery-app)")
    p.add_argument("--session-ttl", type=float, default=60.0,
                   help="minutes after its last use before a session's files are deleted (default 60)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs allowed to wait at once (default 16)")
    p.add_argument("--job-timeout", type=float, default=360.0,
                   help="minutes a job may run before it is stopped and its worker ended (default 360)")
    p.add_argument("--model", default=None, help="default diffusion model id shown in the form")
    p.add_argument("--allow-local-models", action="store_true",
                   help="let users name model folders on this machine (off by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and USAGE_ERROR
    if not (0 < args.session_ttl < 1e6 and 1 <= args.max_queue <= 10_000 and 0 < args.port < 65536
            and 0 < args.job_timeout < 1e6):
        print("engine app: error: --session-ttl and --job-timeout must be > 0, --max-queue in 1..10000 and --port "
              "in 1..65535", file=sys.stderr)
        return USAGE_ERROR
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
