"""The on-device runner as the test SSH device runs it, watched: `python runner_watch.py LOG runner.py ARGS...` runs
runner.py as a script (as `python runner.py ARGS...` would) and then appends to LOG one JSON line, the heavy
frameworks (TensorFlow, Keras, torch) and edgepress modules the runner's process had loaded. The device's Python
here is this machine's, where they are installed: the log is what shows the runner did without them."""

import json
import runpy
import sys

HEAVY = ("tensorflow", "tf_keras", "keras", "torch", "edgepress")


def main() -> None:
    log, sys.argv = sys.argv[1], sys.argv[2:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        with open(log, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "loaded": loaded}) + "\n")


if __name__ == "__main__":
    main()
