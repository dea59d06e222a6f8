"""deploybot's deploy overhead, from its store and an independent watch (bench/watch.py):
push->patch = first watch event carrying the job's image - the job's last image pushed;
complete->deployed = the job marked deployed - first watch event where that rollout is done.
Usage: overhead.py STORE.db WATCH.jsonl JOB..."""
import datetime, json, sqlite3, statistics, sys

db, watch_file, *jobs = sys.argv[1:]
events = [json.loads(line) for line in open(watch_file) if line.strip()]
store = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

def seconds(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()

def complete(e):  # as `kubectl rollout status` judges it
    return (e["observed"] >= e["generation"] and e["updated"] >= e["desired"]
            and e["total"] <= e["updated"] and e["available"] >= e["updated"])

to_patch, to_done = [], []
for job in jobs:
    pushed = seconds(store.execute("SELECT MAX(pushed_at) FROM images WHERE job = ?", (job,)).fetchone()[0])
    finished = seconds(store.execute("SELECT finished_at FROM jobs WHERE id = ?", (job,)).fetchone()[0])
    image = store.execute("SELECT image FROM deploys WHERE job = ?", (job,)).fetchone()[0]
    mine = [e for e in events if e["image"] == image]
    patched = mine[0]["at"]
    done = next(e["at"] for e in mine if complete(e))
    to_patch.append((patched - pushed) * 1000)
    to_done.append((finished - done) * 1000)

def line(name, values):
    return (f"{name:32} median {statistics.median(values):6.1f} ms   min {min(values):6.1f}"
            f"   max {max(values):6.1f}   ({'met' if statistics.median(values) <= 50 else 'NOT met'}: <= 50 ms)")

print(f"== deploybot's own overhead over {len(jobs)} deploys")
print(line("last push -> patch applied", to_patch))
print(line("rollout complete -> job deployed", to_done))
