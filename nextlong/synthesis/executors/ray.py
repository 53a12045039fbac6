"""The Ray executor of `nextlong synthesize --executor ray`: the same stages as the local executor,
run as Ray Data steps on a local Ray instance or a cluster.

Connecting is checked before any work: an address where nothing answers fails within
`CONNECT_TIMEOUT_S` naming the address (`ray.init` itself retries an unreachable head for minutes),
and a cluster with fewer GPUs than `--embed-gpus` asks for fails at once (Ray would otherwise wait
forever for the resources). Ray is imported lazily: `import nextlong` never needs it.
"""

from __future__ import annotations

import contextlib

import os
import socket
import time

from ...corpus.split import DEFAULT_SPLIT_BYTES
from ...errors import NextlongError, missing_extra
from ..framework import Executor, FinishedPrefix

CONNECT_TIMEOUT_S = 10.0  # a TCP probe of the head's address before ray.init
# Ray's notice on stdout for each task it retries ("(raylet) Task ... failed. There are infinite retries remaining,
# so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`."), off: when the
# --num-samples cut ends a chain, Ray Data kills its actor pool with ray.kill and each block still in flight drew
# one, about the run's own stop. A worker that dies is still reported, by Ray's own line ("A worker died or was
# killed while executing a task ..."), and a block that cannot be finished by its error. The notice is the driver's
# (it submits the tasks), so this process's setting applies on a cluster too; one already set is kept. Set only
# while ray.init reads it (`_quiet_retries`): a program that embeds nextlong keeps its own environment.
QUIET_RETRIES = ("RAY_enable_output_error_log_if_still_retry", "0")


class RayClusterError(NextlongError):
    """The Ray cluster cannot be reached, or lacks what the run asks of it."""


def import_ray():
    """`ray` and `ray.data`, or an error that names the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise missing_extra("ray", "ray", "--executor ray") from e
    return ray


def resolve_address(address: str | None) -> str | None:
    """host:port of the cluster `address` names (None: start a local instance). "auto" and an unset
    address follow Ray's rules: RAY_ADDRESS, then the cluster last started on this machine."""
    import_ray()
    from ray._private import services

    if address in (None, "auto") and not os.environ.get("RAY_ADDRESS"):
        found = services.find_gcs_addresses() if address == "auto" else set()
        if address == "auto" and not found:
            raise RayClusterError("--ray-address auto: no running Ray cluster found on this machine (none "
                                  "started with `ray start --head`, and RAY_ADDRESS is not set)")
        if address is None:
            return None
    if isinstance(address, str) and address.startswith("ray://"):
        return address  # Ray Client: probed as host:port below
    try:
        return services.canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as e:
        raise RayClusterError(f"--ray-address {address}: {e} (expected HOST:PORT, 'auto' or ray://HOST:PORT)") from e


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S, asked: str | None = None) -> None:
    """Raise RayClusterError unless a gRPC server (a Ray head's GCS speaks gRPC) answers at `address`
    within timeout_s: a TCP connection, then an HTTP/2 preface answered by a SETTINGS frame.

    Why not just ray.init: on an address where nothing listens it retries for minutes, and on a
    port where some other server listens it waits about two minutes (measured, Ray 2.60)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if asked and asked != address:
        address = f"{asked} ({address})"
    if not host or not port.isdigit():
        raise RayClusterError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.1:6379), 'auto', "
                              "or ray://HOST:PORT")
    t0 = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.settimeout(max(0.5, timeout_s - (time.monotonic() - t0)))
            sock.sendall(_HTTP2_PREFACE)
            reply = sock.recv(9)
    except OSError as e:
        waited = time.monotonic() - t0
        what = e.strerror or ("no answer" if isinstance(e, TimeoutError) else e.__class__.__name__)
        raise RayClusterError(
            f"--ray-address {address}: no Ray head answers there ({what} after {waited:.1f} s). Start one "
            f"with `ray start --head --port {port}` on {host}, or check the address and the firewall") from e
    if len(reply) < 4 or reply[3] != 4:
        raise RayClusterError(
            f"--ray-address {address}: a server answers there, but not a Ray head (it does not speak gRPC); "
            "check the port (`ray start --head` prints the address to join, 6379 by default)")


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_memory: int | None = None,
            timeout_s: float = CONNECT_TIMEOUT_S):
    """Join the cluster at `address` (None: a local instance of `num_cpus` CPUs) and return `ray`.

    Reuses a connection this process already has. Errors are RayClusterError, raised within
    about timeout_s when the address does not answer."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    resolved = resolve_address(address)
    if resolved is not None:
        probe(resolved, timeout_s, asked=address)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                  logging_level="warning")
    if resolved is None:  # a local instance: our limits apply
        kwargs.update(num_cpus=num_cpus, object_store_memory=object_store_memory)
        _hide_token_auth_notice()
    with _sigterm_kept(), _quiet_retries():
        try:
            ray.init(address=resolved, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            if resolved is None:
                raise _no_local_start(e) from e
            raise RayClusterError(f"--ray-address {address}: could not join the Ray cluster: {e}") from e
        except Exception as e:  # a local node that did not come up raises a bare Exception (a traceback)
            if resolved is None:
                raise _no_local_start(e) from e
            raise
    return ray


def _no_local_start(exc: Exception) -> RayClusterError:
    """A local Ray instance that did not start (measured: under `ulimit -f 1710`, "The current node timed out
    during startup", raised as a bare Exception after a traceback's worth of Ray's own lines)."""
    from ...untrusted import one_line

    return RayClusterError(f"--executor ray: could not start a local Ray instance: {one_line(str(exc))[:300]} "
                           "(its logs: /tmp/ray/session_latest/logs)")


@contextlib.contextmanager
def _quiet_retries():
    """QUIET_RETRIES in the environment while ray.init starts this process's core worker (which reads it then),
    and the local instance's processes; taken out after, so the program's environment (its later subprocesses, a
    later ray.init of its own) is as it was. A value already set is the user's: kept, and left."""
    name, value = QUIET_RETRIES
    mine = name not in os.environ
    if mine:
        os.environ[name] = value
    try:
        yield
    finally:
        if mine:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _sigterm_kept():
    """The SIGTERM handler the process had before ray.init, put back after it. ray.init installs its driver's
    own (a stack dump, then exit 15): a scheduler's stop of `nextlong synthesize --executor ray` was then
    recorded as a failure with the error "15", not as the interruption the CLI makes of it (errors.Terminated).
    A process with no handler of its own (the default action) keeps Ray's."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def _hide_token_auth_notice() -> None:
    """Ray 2.5x+ warns, on every local start that finds a saved token, that token authentication is *on* (the
    secure default) and how to turn it off: news to nobody in a local instance only this process uses. The
    opposite warning (authentication off) and every other message stay."""
    import logging

    class _Filter(logging.Filter):
        def filter(self, record):
            return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")

    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(type(f).__name__ == "_Filter" for f in log.filters):
        log.addFilter(_Filter())


def check_resources(ray, *, embed_gpus: int = 0, embed_actors: int = 1,
                    flags: tuple[str, str] = ("--embed-gpus", "--embed-actors")) -> dict:
    """The cluster's CPUs and GPUs; RayClusterError when it has fewer GPUs than `embed_gpus` or no CPU.

    Checked before any work: Ray Data would otherwise wait forever for an actor it cannot place. `flags`
    names the command's own options for the GPUs and the actors (synthesize's by default; acer's are
    --gpus and --actors), so the message points to a flag the user has."""
    gpus_flag, actors_flag = flags
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if embed_gpus and gpus < embed_gpus:
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        raise RayClusterError(
            f"{gpus_flag} {embed_gpus}: the Ray cluster has {gpus:g} GPUs ({nodes} live nodes, {cpus:g} CPUs). "
            f"Add GPU nodes, lower {gpus_flag}, or run on CPUs with {gpus_flag} 0")
    if cpus < 1:
        raise RayClusterError("the Ray cluster has no CPU to run the stages on")
    if embed_actors < 1:
        raise RayClusterError(f"{actors_flag} {embed_actors}: need at least one actor")
    return {"cpus": cpus, "gpus": gpus}


# --- the executor ------------------------------------------------------------------------------


def _renamed(err: NextlongError, message: str) -> NextlongError:
    """`err`'s class (its exit status) with another message, where the class allows it."""
    try:
        return type(err)(message) if type(err).__init__ is NextlongError.__init__ else NextlongError(message)
    except TypeError:
        return NextlongError(message)


def _ray_error_type():
    try:
        from ray.exceptions import RayError
    except ImportError:  # pragma: no cover - only called where ray runs
        return ()
    return RayError


def _from_ray(exc: BaseException) -> bool:
    """Ray's wrapper of a worker's exception: `RayTaskError(NextlongError)` is a NextlongError too, whose
    text is the worker's whole traceback (the one line the user sees would be kilobytes of it)."""
    return isinstance(exc, _ray_error_type())


def _without_retry_advice(message: str) -> str:
    """The message without what Ray Data appends to a failed task's error ("\nFailed to apply UDF transform
    after 1/1 attempts (total backoff 0.0s).\nTo change retry attempts, ... if you believe this to be
    transient."): a stage's error is not transient. Only that text is cut."""
    at = message.rfind("\nFailed to ")
    if at >= 0 and "attempts (total backoff" in message[at:] and message.rstrip().endswith("to be transient."):
        return message[:at]
    return message


def _as_nextlong_error(exc: BaseException, where: str) -> NextlongError:
    """What the user sees for an exception of a stage run on Ray.

    In a worker (`exc` is the stage's own exception): a NextlongError prefixed with the stage and
    block. On the driver (`exc` is Ray's wrapper, sometimes wrapped twice): the worker's NextlongError
    from inside it. Ray's own failures (an actor dead past its restarts, a lost node) become a
    NextlongError naming `where`: the run stops with a message, not a traceback."""
    RayError = _ray_error_type()
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, NextlongError) and not isinstance(cur, RayError):
            if cur is exc:  # in the worker: say where
                return _renamed(cur, f"{where}: {cur}")
            return _renamed(cur, _without_retry_advice(str(cur)))
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return NextlongError(f"{where}: failed on Ray: {type(exc).__name__}: {lines[-1] if lines else ''}")


class _BlockWorker:
    """Runs map stages on blocks inside a Ray worker: `setup` once per actor, then for each block
    number the same steps as the local executor (read the input part, map, write the part and its
    record), so the files are the same whoever runs them. Returns only counts to the driver: the data
    stays on shared storage and never crosses the object store."""

    def __init__(self, pipeline, names, fingerprints, rebuild=False, threads=None, read=None, splits=None, run=None):
        from ..framework import StageContext

        self.contexts = [StageContext(pipeline, pipeline.stage(n), fingerprints[n], rebuild=rebuild,
                                      progress=False, threads=threads, run=run) for n in names]
        self.read, self.splits = read, splits  # the corpus read (first map stage only)
        self.ready = False
        self.started = None  # time.perf_counter() at the setup: its seconds go to the actor's first block

    def _set_up(self) -> None:
        """Each stage's `setup`, at the actor's first block rather than in its constructor: an error there
        (a damaged index, an embedder that does not load) is then the stage's one-line error, as a block's
        is; raised by a constructor it reached the user as ActorDiedError after Ray retried the actor."""
        if self.ready:
            return
        import time

        self.started = time.perf_counter()
        for ctx in self.contexts:
            try:
                ctx.stage.setup(ctx)
            except Exception as e:
                raise _as_nextlong_error(e, f"stage {ctx.stage.name}") from e
        self.ready = True

    def corpus_split(self, s: int) -> dict:
        """Split s of the corpus, read here with the native reader, through the first map stage."""
        from ...corpus.split import describe_split
        from ..read import map_split

        ctx = self.contexts[0]
        try:
            counts = map_split(ctx, self.read, s, self.splits[s], since=self._since())
        except Exception as e:
            raise _as_nextlong_error(e, f"stage {ctx.stage.name}, corpus split {s} ({describe_split(self.splits[s])})") from e
        return {"block": s, "rows": int(counts["docs"])}

    def chain_block(self, j: int) -> dict:
        """Block j through the chain of map stages (each reads the previous one's part j)."""
        from ..framework import map_block

        rows = map_block(self.contexts, j, since=self._since(),
                         on_error=lambda e, ctx: _as_nextlong_error(e, f"stage {ctx.stage.name}, block {j}"))
        return {"block": j, "rows": rows}

    def _since(self) -> float | None:
        """The setup's start for the actor's first block (its seconds are that block's too), else None."""
        since, self.started = self.started, None
        return since

    def __call__(self, batch):
        """Ray Data's face: a batch of block numbers (or corpus split numbers) -> their row counts."""
        import pyarrow as pa

        self._set_up()
        work = self.chain_block if self.read is None else self.corpus_split
        done = [work(int(j)) for j in batch.column("block").to_pylist()]
        return pa.table({"block": pa.array([d["block"] for d in done], pa.int64()),
                         "rows": pa.array([d["rows"] for d in done], pa.int64())})


def _build_whole(stage, ctx) -> dict:
    """A whole stage's build, inside one Ray task (on any node: it reads and writes shared storage)."""
    try:
        return stage.build(ctx) or {}
    except Exception as e:
        raise _as_nextlong_error(e, f"stage {stage.name}") from e


class RayExecutor(Executor):
    """Runs a Pipeline on Ray (protocol: ../framework.py). Same stage code, same files as LocalExecutor.

    * corpus -> first map stage: this process only plans the corpus splits from file sizes; a pool
      of Ray actors (one per CPU) each reads its splits with the native reader, maps them block by
      block and writes them (nextlong/synthesis/read.py: the same steps as the local executor).
    * a chain of map stages (embed; plan -> assemble): Ray Data `map_batches` over the block numbers
      with an actor pool (`concurrency`); the embedder's actors take GPUs when `embed_gpus` > 0.
      Each actor reads its input part from shared storage and writes its output part: files are
      named by block number, so the output does not depend on which actor ran what, or when. Only
      (block, rows) come back; the `--num-samples` cut stops the chain once the finished prefix of
      blocks holds enough rows, whatever order results arrive in.
    * a whole stage (consolidate, near-copy graph, gather, index, units, cut): one Ray task.

    Actors and tasks that die are restarted and retried by Ray (`max_restarts`, `max_task_retries`);
    a block's files are atomic and its record is written last, so a retried or killed block never
    leaves a part counted as done, and a killed driver resumes from the finished blocks and stages."""

    name = "ray"
    corpus_block_docs = 1024  # documents per corpus block (the output does not depend on it)
    corpus_block_bytes = 4 << 20
    corpus_split_bytes = DEFAULT_SPLIT_BYTES  # bytes of corpus files per split (one actor's read)
    # Ray Data's preserve_order for the chains: off. The output does not need it (files are named by
    # block number, the cut reads the finished prefix of blocks); bench_scale.py measures both ways
    # (same bytes; plan -> assemble 101 s without, 111 s with, on 20k chunks, 2 loaded cores).
    preserve_order = False

    def __init__(self, address: str | None = None, embed_gpus: int = 0, embed_actors: int | None = None,
                 threads: int | None = None, *, cpu_actors: int | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None, corpus_block_docs: int | None = None,
                 corpus_block_bytes: int | None = None, corpus_split_bytes: int | None = None, retries: int = 3,
                 flags: tuple[str, str] = ("--embed-gpus", "--embed-actors")):
        self.ray = connect(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
        self.cluster = check_resources(self.ray, embed_gpus=int(embed_gpus or 0),
                                       embed_actors=embed_actors or max(1, int(embed_gpus or 0)), flags=flags)
        self.embed_gpus = int(embed_gpus or 0)
        self.embed_actors = embed_actors or max(1, self.embed_gpus)
        self.cpu_actors = cpu_actors or max(1, int(self.cluster["cpus"]))
        self.threads = threads
        self.corpus_block_docs = corpus_block_docs or self.corpus_block_docs
        self.corpus_block_bytes = corpus_block_bytes or self.corpus_block_bytes
        self.corpus_split_bytes = corpus_split_bytes or self.corpus_split_bytes
        self.retries = retries

    # --- the run -------------------------------------------------------------------------------

    def run(self, pipeline, *, rebuild: bool = False, progress: bool = True) -> dict[str, dict]:
        """As Executor.run, with the run's folders made absolute: Ray's workers need not share the
        driver's working directory (on a cluster they start where `ray start` ran)."""
        import dataclasses
        from pathlib import Path

        pipeline = dataclasses.replace(pipeline, root=Path(pipeline.root).absolute(),
                                       external={k: str(Path(v).absolute()) for k, v in pipeline.external.items()})
        return super().run(pipeline, rebuild=rebuild, progress=progress)

    def before_run(self, progress: bool) -> None:
        import logging

        ctx_data = self.ray.data.DataContext.get_current()
        # the driver draws the local executor's bars (progress.py): Ray Data's count its own batches, and
        # stop short of their totals when the --num-samples cut ends a chain. Its line per dataset and its
        # notice that its bars are off would only come between ours (or break --quiet)
        ctx_data.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its warnings stay (a cluster too small to run)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # a failed block's traceback, logged by these two at ERROR before it is raised: the run says it in one
        # line (_as_nextlong_error), and --debug shows the traceback
        for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        ctx_data.execution_options.preserve_order = bool(self.preserve_order)
        ctx_data.print_on_execution_start = False
        ctx_data.raise_original_map_exception = True  # a stage's NextlongError, not Ray's wrapper of it

    def build_whole(self, stage, ctx) -> dict:
        # max_calls=1: the worker exits after the stage, so what a whole stage held (the near-copy graph,
        # the index build) goes back to the OS; a reused worker kept 4.3 GiB after `embedder` at 1M chunks
        task = self.ray.remote(max_calls=1)(_build_whole).options(num_cpus=1, max_retries=self.retries)
        try:
            return self.ray.get(task.remote(stage, ctx))
        except Exception as e:
            raise _as_nextlong_error(e, f"stage {stage.name}") from e

    # --- corpus -> first map stage ---------------------------------------------------------------

    def read_and_map(self, pipeline, fps, source, ctx) -> dict:
        from ..progress import advance, corpus_bar
        from ..read import CorpusRead, finish_read, split_done

        read = CorpusRead(source, split_bytes=self.corpus_split_bytes, block_docs=self.corpus_block_docs,
                          block_bytes=self.corpus_block_bytes)
        splits = read.plan()  # from file sizes: the driver reads no document
        records = [split_done(ctx, read, s, split) for s, split in enumerate(splits)]
        pending = [s for s, record in enumerate(records) if record is None]
        with corpus_bar(ctx) as bar:
            advance(bar, sum(record["counts"]["docs"] for record in records if record is not None), reused=True)
            if pending:  # one actor per CPU, one thread each: each reads its split and maps it
                self._map_blocks(pending, [ctx], self.cpu_actors, self.threads or 1, {"num_cpus": 1},
                                 read=read, splits=splits, on_result=lambda s, docs: bar.update(docs))
        return finish_read(ctx, read, splits)

    # --- chains of map stages ----------------------------------------------------------------------

    def run_chain(self, pipeline, fps, chain, cut) -> dict[str, dict]:
        from ..progress import ChainProgress, input_rows
        from ..framework import block_done, block_record_path, chain_work, finish_map_chain, read_done, spilled_rows

        results, todo, num_blocks = chain_work(chain)
        if not todo:
            return results
        source = todo[0].input(todo[0].stage.inputs[0])
        pending = [j for j in range(num_blocks) if not all(block_done(ctx, j) for ctx in todo)]
        gpu = any(getattr(ctx.stage, "uses_gpu", False) for ctx in todo)
        if gpu:  # few actors: on CPU each may use the node's threads (torch's own pool)
            actors, threads = self.embed_actors, self.threads
            resources = {"num_gpus": self.embed_gpus / actors} if self.embed_gpus else {"num_cpus": 1}
        else:  # one actor per CPU, one thread each
            actors, threads, resources = self.cpu_actors, self.threads or 1, {"num_cpus": 1}
        stopped = None
        rows_done = {j: int((read_done(block_record_path(todo[-1].out_dir, j)) or {}).get("counts", {})
                            .get("rows", 0)) for j in range(num_blocks) if j not in set(pending)}
        with ChainProgress([c.stage.name for c in todo], todo[0].stage.progress_unit, input_rows(source, num_blocks),
                           cut, todo[0].progress) as bar:
            for j, rows in rows_done.items():
                bar.block_done(j, rows, reused=True)
            for j in pending:  # chunks an interrupted run embedded and spilled: done, not this run's work
                if not block_done(todo[0], j):
                    bar.begin(j, spilled_rows(todo[0], j))
            if pending:
                stopped = self._map_blocks(pending, todo, actors, threads, resources, cut=cut, rows_done=rows_done,
                                           on_result=bar.block_done)
        results.update(finish_map_chain(todo, num_blocks, stopped))
        return results

    def _map_blocks(self, items: list[int], contexts, actors: int, threads, resources: dict, *, cut=None,
                    rows_done=None, read=None, splits=None, on_result=None) -> int | None:
        """Ray Data `map_batches` over block numbers (or corpus splits) with a pool of `_BlockWorker`s;
        returns the block the `cut` stopped before, or None. `on_result(item, rows)` is called as each item
        finishes (the progress bars). Ray Data restarts a dead actor and retries its item (max_restarts /
        max_task_retries -1)."""
        rebuild = contexts[0].rebuild
        ds = self.ray.data.from_items([{"block": j} for j in items], override_num_blocks=len(items))
        ds = ds.map_batches(
            _BlockWorker, batch_size=1, batch_format="pyarrow",
            compute=self.ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            fn_constructor_kwargs=dict(pipeline=contexts[0].pipeline, names=[c.stage.name for c in contexts],
                                       fingerprints=self._fingerprints(contexts), rebuild=rebuild, threads=threads,
                                       read=read, splits=splits, run=contexts[0].run), **resources)
        names = " -> ".join(c.stage.name for c in contexts)
        prefix = FinishedPrefix(rows_done)
        try:
            for out in ds.iter_rows():  # in any order: the finished prefix of blocks counts
                prefix.add(int(out["block"]), int(out["rows"]))
                if on_result is not None:
                    on_result(int(out["block"]), int(out["rows"]))
                if cut is not None and prefix.rows >= cut:
                    return prefix.blocks
        except Exception as e:
            if isinstance(e, NextlongError) and not _from_ray(e):  # the driver's own (a bar, the cut)
                raise
            raise _as_nextlong_error(e, f"stage {names}") from e
        return None

    @staticmethod
    def _fingerprints(contexts) -> dict:
        return {c.stage.name: c.fingerprint for c in contexts}
