import subprocess, sys, signal, os, time
lim=float(sys.argv[1]); cmd=sys.argv[2:]
p=subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
try:
    out,_=p.communicate(timeout=lim); note=""
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGINT)
    try: out,_=p.communicate(timeout=30); note="(still running at %ss; SIGINT)"%lim
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); out,_=p.communicate(); note="(HUNG, killed)"
lines=[l for l in out.decode(errors='replace').splitlines() if ' INFO ' not in l and ' WARNING ' not in l]
print("\n".join(l[:300] for l in lines[-4:])); print("rc=",p.returncode,note)
