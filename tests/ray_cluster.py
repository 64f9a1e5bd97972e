"""A two-node Ray cluster on loopback, for the sweep tests: run it inside ``unshare --net``.

    unshare --net python tests/ray_cluster.py WORK -- sweep SWEEP.toml -o OUT

Brings up ``lo`` (the only interface in a fresh network namespace: Ray replaces 127.0.0.1 with
a routable address where it finds one), starts a head node and a second node advertising
``raspberry-pi-5`` (one CPU each, token auth, Ray's files under WORK), runs ``edgevt ARGS
--address`` against it, stops both nodes, and writes WORK/cluster.json: the node ids (which
one is the device), the command's exit code and output.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

PORT = 6391
DEVICE = "raspberry-pi-5"


def main() -> None:
    work = Path(sys.argv[1])
    args = sys.argv[sys.argv.index("--") + 1 :]
    bin_dir = Path(sys.executable).parent
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {
        **os.environ,
        "HOME": str(work / "home"),
        "RAY_TMPDIR": str(work / "ray"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    for folder in ("home", "ray"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
              "--object-store-memory", str(200 * 2**20)]  # fmt: skip
    ray = str(bin_dir / "ray")
    address = f"127.0.0.1:{PORT}"
    result: dict = {}
    try:
        subprocess.run([ray, "start", "--head", "--port", str(PORT), "--include-dashboard=false",
                        *common], env=env, check=True, capture_output=True)  # fmt: skip
        subprocess.run([ray, "start", "--address", address, "--resources",
                        json.dumps({DEVICE: 1}), *common], env=env, check=True,
                       capture_output=True)  # fmt: skip
        nodes = subprocess.run(
            [sys.executable, "-c", "import json, ray; ray.init(address='" + address + "', "
             "logging_level='ERROR'); print(json.dumps([{'id': n['NodeID'], 'resources': "
             "n['Resources']} for n in ray.nodes() if n['Alive']]))"],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        result["nodes"] = json.loads(nodes.stdout.strip().splitlines()[-1])
        proc = subprocess.run([str(bin_dir / "edgevt"), *args, "--address", address], env=env,
                              capture_output=True, text=True)  # fmt: skip
        result.update(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        (work / "cluster.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
