import json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, "/work/main")
from bench.evidence import SETUPS
out = sys.argv[1]; seeds = [int(s) for s in sys.argv[2].split(",")]; datasets = sys.argv[3].split(",")
variants = json.loads(sys.argv[4])
env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
os.makedirs(f"{out}/runs", exist_ok=True)
jobs = [(d, v, s) for s in seeds for d in datasets for v in variants if not os.path.exists(f"{out}/runs/{d}-{v}-seed{s}.json")]
jobs.sort(key=lambda j: j[0] != "digits")  # long ones first
def go(job):
    d, v, s = job; t = time.time()
    cfg = json.dumps({"setup": SETUPS[d], "overrides": variants[v]})
    p = subprocess.run([sys.executable, "-m", "bench.evidence", "one", d, v, str(s), cfg, "--out", out], env=env, capture_output=True, text=True, cwd="/work/main")
    print(d, v, s, f"{time.time()-t:.0f}s", "ok" if p.returncode == 0 else p.stderr[-1500:], flush=True)
with ThreadPoolExecutor(2) as ex: list(ex.map(go, jobs))
