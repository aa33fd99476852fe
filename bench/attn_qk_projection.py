"""Can the weight change alone propose an every-layer attention trigger's pair? Ranks every ordered
(query token, key token) pair of the vocabulary by layer L's attention-logit change, dormant minus
base, summed over heads and double-centred (each token's own effect cancels), with each token's q/k
from its own model's first L layers (the token alone after the chat prefix; the key side is then exact
for the first word, the query side is not: in the prompt the second word has seen the first).
The trigger file is read only to report where the pair (q = second word, k = first word) ranks.

    python bench/attn_qk_projection.py PAIR_DIR 3,4      # one torch thread; ~4 min per layer
"""
import json, sys, time, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
from l0score.first_module.segments import Segment, batch_cache
from l0score.core.model_pair import ModelPair
torch.set_num_threads(1)
d = Path(sys.argv[1]); layers = [int(x) for x in sys.argv[2].split(",")]
truth = json.loads((d / "trigger.json").read_text())
tok = AutoTokenizer.from_pretrained(d / "base")
A, B = truth["trigger_ids"][0], truth["trigger_ids"][1]
pool = ModelPair.load(d / "base", d / "dormant").real_token_ids()
pos_of = {t: i for i, t in enumerate(pool.tolist())}
pre = tok.apply_chat_template([{"role": "user", "content": "XQX"}], tokenize=False, add_generation_prompt=True)
prefix = tok(pre.split("XQX")[0], add_special_tokens=False).input_ids
P = len(prefix)
stop = max(layers) + 1
def states(path):
    m = AutoModelForCausalLM.from_pretrained(path).eval()
    seg = Segment(m, 0, stop)
    grabbed = {}
    hooks = []
    for L in layers:
        at = m.model.layers[L].self_attn
        hooks.append(at.q_proj.register_forward_hook(lambda mod, i, o, L=L: grabbed.__setitem__(("q", L), o)))
        hooks.append(at.k_proj.register_forward_hook(lambda mod, i, o, L=L: grabbed.__setitem__(("k", L), o)))
    _, cache = seg.run(None, torch.arange(P)[None], None, input_ids=torch.tensor([prefix]))
    out = {k: [] for L in layers for k in (("q", L), ("k", L))}
    for s in range(0, len(pool), 2048):
        ids = pool[s:s + 2048, None]
        seg.run(None, torch.full((len(ids), 1), P), batch_cache(cache, len(ids)), input_ids=ids)
        for k in out: out[k].append(grabbed[k][:, 0])
    for h in hooks: h.remove()
    res = {}
    hd = m.config.hidden_size // m.config.num_attention_heads
    for L in layers:
        q = torch.cat(out[("q", L)]).view(len(pool), -1, hd).transpose(0, 1)   # [H, V, hd]
        k = torch.cat(out[("k", L)]).view(len(pool), -1, hd).transpose(0, 1)   # [KV, V, hd]
        # q at position P+1 (the second word), k at P (the first)
        cos, sin = m.model.rotary_emb(q, torch.tensor([[P + 1]]))
        q, _ = apply_rotary_pos_emb(q[None], q[None], cos, sin); q = q[0]
        cos, sin = m.model.rotary_emb(k, torch.tensor([[P]]))
        k, _ = apply_rotary_pos_emb(k[None], k[None], cos, sin); k = k[0]
        res[L] = (q / hd ** 0.5, k)
    return res, m.config
t0 = time.time()
sb, cfg = states(d / "base"); sd, _ = states(d / "dormant")
print(f"states {time.time()-t0:.0f}s; pool {len(pool)}; trigger {truth['trigger_text']!r}", flush=True)
H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
iA, iB = pos_of[A], pos_of[B]
for L in layers:
    qb, kb = sb[L]; qd, kd = sd[L]
    grp = H // KV
    Q = torch.cat([torch.cat([qd[h] - qd[h].mean(0), -(qb[h] - qb[h].mean(0))], -1) for h in range(H)], -1)
    K = torch.cat([torch.cat([kd[h // grp] - kd[h // grp].mean(0), kb[h // grp] - kb[h // grp].mean(0)], -1) for h in range(H)], -1)
    target = float(Q[iB] @ K[iA])
    above = 0; rowmax = torch.empty(len(pool)); colmax = torch.full((len(pool),), -1e9)
    for s in range(0, len(pool), 2048):
        S = Q[s:s + 2048] @ K.T
        above += int((S > target).sum()); rowmax[s:s + 2048] = S.amax(1); colmax = torch.maximum(colmax, S.amax(0))
    rq = int((rowmax > rowmax[iB]).sum()) + 1; rk = int((colmax > colmax[iA]).sum()) + 1
    print(f"L{L} all heads: pair dS {target:.2f}, pair rank {above + 1:,}; query-side rank of B {rq:,}, key-side rank of A {rk:,}; {time.time()-t0:.0f}s", flush=True)
