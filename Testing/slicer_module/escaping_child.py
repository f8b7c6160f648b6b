"""A child whose own child escapes the process tree (a new session, its parent gone: re-parented to init) while
keeping the output pipes open, as a daemonising helper may; then it sleeps until killed. Writes the escaped
grandchild's pid to the file given as the first argument, so the test can end it."""
import os
import subprocess
import sys
import time

if __name__ == "__main__":
    middle = os.fork()
    if middle == 0:  # the middle process starts the escaping one and exits at once
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            handle.write(str(grandchild.pid))
        os._exit(0)
    os.waitpid(middle, 0)
    print('{"progress": 0.1, "message": "working"}', flush=True)
    time.sleep(60)
