"""Runs the processes of a multi-host job on this machine, joined over 127.0.0.1, for the multi-device tests."""

import socket
import subprocess
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now: the job's coordinator address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_together(commands, envs, cwd, seconds=540):
    """Starts one process per (command, env), waits for all; returns their outputs, asserting each exited 0.

    All are killed once `seconds` have passed (a job whose processes wait on each other forever fails here).
    """
    workers = [subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for command, env in zip(commands, envs)]
    outputs, deadline = [], time.monotonic() + seconds
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return outputs
