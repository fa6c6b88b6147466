"""Probe: global top-K distillation from the closed-form fit, learning rate and trained layers compared
at the same wall-clock budget (torch, bf16 autocast, 8 WikiText-2 windows of 1,024: quick comparisons).

    python bench/heal_global_probe.py 1e-4,3e-5 4      # lr[@first trained layer], minutes each
    python bench/heal_global_probe.py 3e-4,1e-4@0 4
    python bench/heal_global_probe.py 3e-4@0 4

Student: SmolLM2 minus angular layers 13-18, healed with down-cut on 32 x 512 C4 tokens (seed 1); KD
on 160 windows of 512 C4 tokens (seed 7), top-64 teacher logits. One JSON row per setting on stdout.
"""
import time, torch, copy, json, sys
from pathlib import Path
from edgeprune.store import StepStore
from edgeprune.stages.load import import_model
from edgeprune.toolchain.hf import load_model, resolve_model
from edgeprune.stages.calib import calibration_windows
from edgeprune.config.recipe import Calibration
from edgeprune.surgery.layers import remove_layers
from edgeprune.stages.heal import heal_model, teacher_states
from edgeprune.recovery.teacher import FixedTopK, teacher_topk
from edgeprune.stages.heal_global import global_distill
from edgeprune.recovery.hf_ppl import hf_perplexity
from edgeprune.data import eval_text
torch.set_num_threads(2)
hf_dir, _ = import_model(StepStore(Path.home()/".cache/edgeprune/steps"), resolve_model(None))
teacher, tok = load_model(hf_dir); teacher.float().eval()
wiki = eval_text()
def ppl(m):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return round(hf_perplexity(m, tok, wiki, 1024, 8)["ppl"], 3)
fit = calibration_windows(tok, Calibration(samples=32, seq_len=512, seed=1))
train = calibration_windows(tok, Calibration(samples=160, seq_len=512, seed=7))
t=time.time(); topk = teacher_topk(teacher, train, 64, bf16=True); print("topk s", time.time()-t, flush=True)
states = teacher_states(teacher, fit)
removed=[13,14,15,16,17,18]
student = remove_layers(copy.deepcopy(teacher), removed)
print("unpruned", ppl(teacher), "unhealed", ppl(student), flush=True)
heal_model(student, states, fit, removed, "down-cut")
print("healed", ppl(student), flush=True)
del states
for spec in sys.argv[1].split(","):
    lr, first = (float(spec.split("@")[0]), int(spec.split("@")[1]) if "@" in spec else 12)
    m = copy.deepcopy(student)
    info = global_distill(m, train, FixedTopK(topk, tail=False), first, minutes=float(sys.argv[2]), lr=lr)
    print(json.dumps({"lr": lr, "ppl": ppl(m), **info}), flush=True)
