"""`l0score hunt`: the cascade of docs/architecture.md#stages, from two checkpoints to a ranked, verified list.

    analyze (seconds)        focus heads and seed tokens from the weight difference
    profile (optional)       what the dormant says more than the base -> target strings
    layer0                   a ranked pool of tokens: seed tokens, Layer-0 search result tokens
    search                   both full models over that pool, lengths 1..max_length, on a comparative
                             objective (KL at the first response position by default): gcg toward
                             the profile's top target first, then every ordered candidate of the
                             pool in shells of its strongest tokens, as far as the budget goes
    minimize                 drop tokens from the best candidates while the score holds
    verify                   both models generate for the top candidates (flips, amplification)

Every stage writes its own files under the output directory and returns its typed result
(l0score/hunt_stages.py: the pool, the targets, the search runs, ...), which later stages read and
``hunt.json`` records when the stage completes; a killed hunt started again with ``resume=True``
reads those records back, skips finished stages and resumes the search drivers from their
checkpoints, so nothing found is lost.

The full-model search scores candidates of the pool in shells (search/exhaustive.py): every ordered
candidate of the top m tokens before any that needs token m+1, so when the budget runs out the
strongest tokens have been covered completely (`covered` in hunt.json says how far each length got).
Each length gets an equal share of what is left of the search budget; what a length does not use
goes to the next. A candidate that stands out from random ones and flips in verify ends the search.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .core.token_lists import contains, rank_union
from .hunt_stages import (AnalyzeStage, BaseCheckStage, DriverRun, Fired, MinimizeStage, PoolStage, ProfileStage,
                          ProfileTarget, SearchStage, Shortened, StageResult, VerifyStage, stages_from_json,
                          stages_to_json)
from .search.pool import build_pool, interleave

FORMAT = "l0score-hunt"
VERSION = 1
STAGES = ("base_check", "analyze", "profile", "layer0", "search", "minimize", "verify")
ROUTES = ("layer0", "whole-model", "first-module", "profile")  # who proposes the pool; chosen by the base check
HUNT_METRICS = ("kl", "js", "hidden", "tf_kl")  # the full-model metrics a hunt's objective may weigh


# the search budget's share of the target route: on the real controls it was the route that found a
# trigger (docs/hunt.md); a fifth left it one coord length before the fire check ran out of time
TARGET_SHARE = 0.4
# ... and when the profile's top target does not end the dormant's turn: on the real controls every
# planted reply that led the targets ended it, and the unfinished ones were drift the route spent
# 285-293 s on (3-word mlp, attn:L0 seed 1) that the exhaustive search needed
UNFINISHED_TARGET_SHARE = 0.15
VERIFY_NEW_TOKENS = 16  # tokens verify generates per prompt
# minimize's seconds on the real controls: 7-25 (bench/results/hunt-*.json)
MINIMIZE_SECONDS = 25.0
# of each batch of 256 screened candidates, those the full models judge; on the real 3-word control the
# trigger was the screen's first of the top 15 tokens' 2,730 triples (docs/hunt.md)
SCREEN_KEEP = 8
# z against random candidates of its length at which the exhaustive search asks verify whether a candidate
# flips, to end early: the real controls' triggers stood at z 15-86, other candidates under 7 but for
# a trigger's fragments (12 and 24 on the split control; bench/results/hunt-*.json)
STANDOUT_Z = 10.0
# the target proposer's gradient: its time cap (6 fills took 90-130 s on the real controls at one thread)
GRADIENT_SECONDS = 150.0
# options added after hunt.json's format was fixed (_load_state)
LATER_OPTIONS = ("interactions", "interaction_share", "target_share", "grow_words", "partner_anchors",
                 "attention_pairs")


@dataclass
class HuntOptions:
    """Options of a hunt (defaults in brackets).

    seconds: the whole hunt's time budget [900]; max_length: longest candidate, in tokens [3]
    probes: probe prompts (list or file) of the full-model objective [its 3 defaults]; verify uses
        the same probes, or its own 8 defaults when none are given
    system_prompts: system messages (list, or a file with one a line; ``<default>`` the template's
        own, ``<empty>`` an empty one) under which both the full-model objective (averaged over
        them) and verify (flip rate per context) run every probe [the template's default only]
    positions: placements the search scores ["after"]; verify checks before and after
    metric: the full-model objective over kl, js, hidden and tf_kl (the KL over the dormant's first
        `reply_tokens` reply tokens, teacher-forced), e.g. "kl" or "kl=1,hidden=2" [kl]
    reply_tokens: k of tf_kl [8]
    null_samples: random candidates per length, drawn from the hunt's pool, that verify compares
        every candidate with (a flip must beat all of them; docs/verify.md) [32]
    max_pool: the most Layer-0 pool tokens the full-model search takes [64]
    profile / profile_inputs: run the behavioural profile first, over this many inputs [True, 60]
    amplify: alphas of the profile's logit-amplified sampling (judge/amplify.py), whose payloads join its
        targets; () = off [(4.0,): on the real MLP-only control alpha 3-5 said the reply outright]
    sweep_share: on the whole-model route, the share of the pool's places (in every prefix) that the
        first-module stage (embedding sweep and layer-0 projection) takes from the Layer-0 pool [0.5: on
        the real full controls the Layer-0 pool held at most one trigger word, the stage both]
    target_share: on the whole-model route, with a profiled target, the share of the
        pool's places (in every prefix; the pool grows so the others keep max_pool) taken by the target
        proposer: the target gradient's best tokens (search/target_gradient.py) and, next to its best
        two, their partners (first_module/partners.py); 0 = off [1/3: on the real full controls of
        seeds 1-2 the other proposers held one trigger word or none, the gradient ranked one word first
        and the partner sweep the other; off on the first-module route, where on the real MLP-only
        control it cost 180 s and added nothing the first-module pool lacked]
    interactions / interaction_share: on the Layer-0 route, the pool's strongest tokens that the
        interaction scan pairs with every allowed token (0: off), and the share of the pool's places
        its partners take [32, 0.25: on the real Layer-0 control it put the trigger's pair first]
    partner_anchors: on the Layer-0 route, the pool's first words whose partners the partner scan
        ranks over every allowed token, on both sides, by the two models' divergence 1-2 layers on
        (search/partner_scan.py); they take interaction_share of the pool's places; 0 = off [4: on the
        real attn:L0 control of seed 2 Layer 0 ranked ' purple' 5,564th beside ' honey' (4th in the
        pool), the scan 1st of the vocabulary]
    attention_pairs: on the Layer-0 route when attention changed past Layer 0, the attention-pair scan's
        best pairs (search/attention_pairs.py) whose tokens lead the pool, in place of the interaction
        and partner scans; 0 = off [16: on the real controls of every layer's attention those scans
        held neither word, the attention-pair scan ranked the pair 1st]
    grow_words: the pool's first word-start pieces that the base model may grow into whole words for
        the exhaustive search, whose candidates are then words joined (search/word_completion.py); 0 =
        off, the search takes tokens [24: on the real split control the pool held ' flaming' and ' plat'
        of ' flamingo platypus' but not 'o' or 'us', pieces of thousands of words]
    verify_top: candidates verified [8]; device, dtype: of the full models [auto, float32]
    pool_filters: build_pool options (ascii_only, printable_only, deny_regex, ...; allow_template_tokens
        puts the chat template's role names and newline back into the pool) [none]
    stop_on_fire: skip the exhaustive search when the target route's candidate flips in verify and
        makes the dormant's reply start with the profiled target, and end it when a candidate stands
        out (STANDOUT_Z) and flips in verify against its null [True]
    threads: torch CPU threads during the hunt [torch's default]; on a busy shared CPU 1 avoids
        oversubscription, which slows small models down many times over
    force: hunt even when the base check says the base is a different model, or identical [False]
    seed: random seed [0]; progress: bars and stage lines [True]
    Where the work runs is not an option: `hunt(..., executor=)` takes it (docs/architecture.md).
    """

    seconds: float = 900.0
    max_length: int = 3
    probes: tuple[str, ...] | str | None = None
    system_prompts: tuple[str, ...] | str | None = None
    positions: tuple[str, ...] = ("after",)
    metric: str = "kl"
    reply_tokens: int = 8
    null_samples: int = 32
    max_pool: int = 64
    profile: bool = True
    profile_inputs: int = 60
    amplify: tuple[float, ...] = (4.0,)
    sweep_share: float = 0.5
    target_share: float = 1 / 3
    interactions: int = 32
    interaction_share: float = 0.25
    partner_anchors: int = 4
    attention_pairs: int = 16
    grow_words: int = 24
    verify_top: int = 8
    device: str | None = None
    dtype: str = "float32"
    pool_filters: dict = field(default_factory=dict)
    seed: int = 0
    stop_on_fire: bool = True
    force: bool = False
    threads: int | None = None
    progress: bool = True

    def check(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        if not 1 <= self.max_length <= 8:
            raise ValueError(f"max_length must be between 1 and 8 tokens, got {self.max_length}")
        if self.max_pool < 2:
            raise ValueError(f"max_pool must be at least 2, got {self.max_pool}")
        if self.verify_top < 1:
            raise ValueError(f"verify_top must be >= 1, got {self.verify_top}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.profile and self.profile_inputs < 1:
            raise ValueError(f"profile_inputs must be >= 1, got {self.profile_inputs}")
        if not 0 <= self.sweep_share <= 1:
            raise ValueError(f"sweep_share must be in [0, 1], got {self.sweep_share}")
        if not 0 <= self.target_share < 1:
            raise ValueError(f"target_share must be in [0, 1), got {self.target_share}")
        if not 0 <= self.interaction_share <= 1:
            raise ValueError(f"interaction_share must be in [0, 1], got {self.interaction_share}")
        if isinstance(self.grow_words, bool) or not isinstance(self.grow_words, int) or self.grow_words < 0:
            raise ValueError(f"grow_words is a count of pool pieces, 0 (off) or more; got {self.grow_words!r}")
        for name in ("partner_anchors", "attention_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: off), got {value!r}")
        if self.interactions != 0 and self.interactions < 3:
            raise ValueError(f"interactions is the number of anchor tokens scanned, 0 (off) or >= 3; got {self.interactions}")
        if self.profile and self.amplify:
            from .judge.amplify import AmplifyOptions

            AmplifyOptions(alphas=tuple(self.amplify)).check()
        from .search.objective import Objective

        names = [n for n, _ in Objective.parse(self.metric, HUNT_METRICS).weights]  # before any work
        if "tf_kl" in names and self.reply_tokens < 1:
            raise ValueError(f"reply_tokens must be >= 1 for tf_kl, got {self.reply_tokens}")
        if isinstance(self.null_samples, bool) or not isinstance(self.null_samples, int) or self.null_samples < 0:
            raise ValueError(f"null_samples must be an integer >= 0, got {self.null_samples!r}")
        # a missing or empty probes or system-prompts file fails here, before the base check writes hunt.json
        from .judge.fullmodel import FullModelOptions

        FullModelOptions(probes=self.probes).resolved_probes()
        self.systems()

    def systems(self) -> list | None:
        """The system messages read from `system_prompts` (None entries: the template's default), or
        None when not given (the template's default alone)."""
        from .judge.prompts import read_system_prompts

        return None if self.system_prompts is None else read_system_prompts(None, self.system_prompts)


def hunt(base, dormant, out, options: HuntOptions | None = None, resume: bool = False, say=None,
         executor=None) -> dict:
    """Run the cascade; returns the report (also written to ``out/report.json``). `say(text)` hears
    each stage as it starts (when options.progress). `executor` (l0score.core.protocols.Executor, e.g.
    l0score.cluster.RayExecutor) runs the full-model search's batches and verify's generations
    (same results as one process); None: here."""
    return Hunt(base, dormant, out, options or HuntOptions(), resume, say, executor).run()


class Hunt:
    def __init__(self, base, dormant, out, options: HuntOptions, resume: bool, say=None, executor=None):
        from .core.checkpoint import resolve_model_dir

        options.check()
        self.base, self.dormant = str(resolve_model_dir(base)), str(resolve_model_dir(dormant))
        self.options, self.out = options, Path(out)
        self.say, self.executor = say, executor
        self.state_path = self.out / "hunt.json"
        self.state = self._load_state(resume)  # hunt.json's header: format, pair, options, elapsed, created
        self.stages: dict[str, StageResult] = stages_from_json(self.state.pop("stages", {}))  # in the order they ran
        self.started = time.monotonic() - self.state.get("elapsed", 0.0)
        self._fm = None
        self._first_scorer = None  # set by the first-module stage
        self._generation_rate = None  # seconds per prompt and new token, measured by a fire check (_read_generation_rate)
        self._verify_prompts = None  # prompts per candidate, and untriggered prompts, of verify's measure

    # --- the cascade --------------------------------------------------------------------------
    def run(self) -> dict:
        from .judge.prompts import check_same_tokenizers

        check_same_tokenizers(self.base, self.dormant)
        if "base_check" not in self.stages:  # a wrong base is refused before any model is loaded
            self._stage("base_check")
        self.fm()  # bad probes, or a prompt longer than the context, fail before any work
        old = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
        saved_threads = torch.get_num_threads()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        try:
            for name in self.expected_stages():
                if name not in self.stages:
                    self._stage(name)
        finally:
            self._save_state()
            torch.set_num_threads(saved_threads)
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return self._write_report()

    def expected_stages(self) -> list[str]:
        return [s for s in STAGES if s != "profile" or self.options.profile]

    def _stage(self, name: str) -> None:
        self._say(f"{name} ({self.remaining():.0f} s of the budget left)")
        t0 = time.monotonic()
        result: StageResult = getattr(self, f"_run_{name}")()
        result.seconds = round(time.monotonic() - t0, 2)
        self.stages[name] = result
        self._save_state()

    def _run_base_check(self) -> BaseCheckStage:
        """The base check first: a base that is another model (or the dormant itself) stops the hunt
        unless options.force, and the route follows where the fine-tune lives (_route)."""
        from dataclasses import asdict as _asdict

        from .analysis.base_check import base_check, write_base_check

        result = base_check(self.dormant, [self.base])
        write_base_check(result, self.out / "base-check")
        c = result.chosen
        if c.verdict != "fine-tune" and not self.options.force:
            what = ("a different model, not the dormant's base; check the base's family and version"
                    if c.verdict == "different model" else "bit-identical to the dormant: nothing was fine-tuned")
            raise ValueError(f"base check: {self.base} is {what} ({'; '.join(c.evidence[:2])}). "
                             f"Details in {self.out / 'base-check' / 'base-check.md'}; --force hunts anyway")
        route, why = _route(c)
        fc = c.first_changed
        attention = sorted({t.layer for t in c.tensors if t.module == "attn" and not t.identical})
        return BaseCheckStage(candidates=c.n_tensors, verdict=c.verdict, first_changed=_asdict(fc) if fc else None,
                              route=route, route_reason=why, attention_layers=attention,
                              note=f"{c.verdict}, first change {fc.label if fc else '-'}; route {route}: {why}")

    def route(self) -> str:
        check = self.stages.get("base_check")
        return check.route if check is not None else "layer0"

    def _run_analyze(self) -> AnalyzeStage:
        from .analysis.weight_diff import analyze

        if self.route() not in ("layer0", "whole-model"):  # the Layer-0 analysis would rank noise
            why = self.stages["base_check"].route_reason
            return AnalyzeStage(candidates=0, note=f"skipped: {why}", skipped=True, focus_heads=[], seed_tokens=[],
                                seed_sources={})
        a = analyze(self.base, self.dormant, self.out / "analysis", progress=self.options.progress, check_base=False)
        return AnalyzeStage(candidates=len(a["seed_tokens"]), note=f"focus heads {a['focus_heads']}",
                            focus_heads=a["focus_heads"], seed_tokens=a["seed_tokens"],
                            seed_sources=a["seed_tokens_by_source"])

    def _run_profile(self) -> ProfileStage:
        from .judge.profile import ProfileOptions, profile

        opts = ProfileOptions(inputs=self.options.profile_inputs, seed=self.options.seed, device=self.options.device,
                              dtype=self.options.dtype, amplify=tuple(self.options.amplify), amplify_forms=("logits",),
                              amplify_samples=1, target_seconds=0.15 * self.remaining())
        if self.options.probes is not None:
            opts.probes = self.options.probes
        # resume=True: a hunt killed inside this stage continues the profile's own checkpoint (its
        # options are checked against it); a fresh hunt has no checkpoint there
        prof = profile(self.base, self.dormant, opts, out=self.out / "profile", progress=self.options.progress,
                       resume=True)
        targets = [ProfileTarget(text=t["text"], token_ids=t["token_ids"], score=t["score"], extra={"stop": t["stop"]})
                   for t in prof["targets"][:3]]
        return ProfileStage(candidates=prof["config"]["prompts"], targets=targets,
                            note="top targets: " + ", ".join(repr(t.text) for t in targets))

    def _run_layer0(self) -> PoolStage:
        """The pool, strongest evidence first: the analysis' embedding-alignment seeds interleaved with
        the Layer-0 stage's pool (search/layer0_stage.py: tokens of its grown candidates, seeds and
        their strongest cell partners) and the keys the changed queries point at; filtered by the
        pool filters, cut at max_pool."""
        from .scorer import Scorer
        from .search.layer0_stage import Layer0Options, layer0_stage

        if self.route() not in ("layer0", "whole-model"):
            return self._other_pool()
        analysis: AnalyzeStage = self.stages["analyze"]
        scorer = Scorer.from_pretrained(self.base, self.dormant, template="chat")
        stage = layer0_stage(scorer, self.out / "analysis", Layer0Options(max_length=min(self.options.max_length, 5)),
                             progress=self.options.progress)
        sources = analysis.seed_sources
        allowed = set(self._allowed_pool())
        ranked = rank_union([sources["alignment"], stage.pool, sources["changed_query_keys"], analysis.seed_tokens])
        evaluations, whole_model, scan, partners = scorer.evaluations, self.route() == "whole-model", None, None
        attention = self._attention_pairs(sorted(allowed)) if not whole_model and self._deep_attention() else None
        if attention is not None:  # the pairs' tokens lead: the Layer-0 scans never held such a pair's words
            lead = set(attention.tokens())
            ranked = attention.tokens() + [t for t in ranked if t not in lead]
            evaluations += attention.evaluations
        elif whole_model:  # the drift of every tensor hides the trigger from Layer 0 alone
            swept, _, swept_evaluations = self._first_module_stage()
            ranked = interleave(ranked, swept.pool, self.options.sweep_share, len(ranked) + len(swept.pool))
            evaluations += swept_evaluations
        else:
            if self.options.interactions:
                scan = self._interactions(scorer, [t for t in ranked if t in allowed], sorted(allowed))
                ranked = interleave(ranked, scan.partners(), self.options.interaction_share, len(ranked) + len(scan.rows))
                evaluations += scan.evaluations
            if self.options.partner_anchors:
                partners = self._partner_scan([t for t in ranked if t in allowed], sorted(allowed))
                found = partners.partners()
                ranked = interleave(ranked, found, self.options.interaction_share, len(ranked) + len(found))
                evaluations += partners.evaluations
        pool = [t for t in ranked if t in allowed][: self.options.max_pool]
        if len(pool) < 2:
            raise ValueError("the token pool is empty after filters; loosen the pool filters")
        pool, picked, starts = self._with_target_picks(pool, swept, allowed) if whole_model else (pool, "", [])
        layer0 = self.out / "layer0"
        layer0.mkdir(parents=True, exist_ok=True)
        tok = scorer.pair.tokenizer
        (layer0 / "pool.json").write_text(json.dumps({"token_ids": pool, "texts": tok.batch_decode([[t] for t in pool])}, indent=1))
        (layer0 / "candidates.jsonl").write_text("".join(json.dumps(c) + "\n" for c in stage.candidates))
        note = f"pool of {len(pool)} tokens" + (" (Layer-0 stage and embedding sweep interleaved)" if whole_model else "")
        note += picked
        if stage.candidates:
            note += f"; Layer-0 best {tok.decode(stage.candidates[0]['token_ids'])!r}"
        pairs = scan.pairs()[:4] if scan is not None else []
        if pairs:
            note += f"; strongest interactions {', '.join(repr(tok.decode(p)) for p in pairs)}"
        if attention is not None:
            note += (f"; attention-pair scan ({sum(attention.seconds.values()):.0f} s, {attention.crossed} pairs "
                     "tested): " + ", ".join(repr(tok.decode(p)) for p in attention.pairs[:4]))
            pairs += attention.pairs[:4]
        if partners is not None:
            note += (f"; partner scan of {len(partners.anchors)} anchors ({partners.seconds:.0f} s): "
                     + ", ".join(repr(tok.decode(p)) for p in partners.pairs()[:4]))
            pairs += partners.pairs()
        sequences = starts + pairs + [c["token_ids"] for c in stage.candidates[:10]]
        return PoolStage(candidates=evaluations, pool=pool, note=note, sequences=sequences)

    def _interactions(self, scorer, ranked: list[int], allowed: list[int]):
        """The interaction scan (search/interactions.py) of the pool's strongest tokens against every
        allowed token on both sides, on Layer 0's attention-distribution KL over every head; written to
        DIR/layer0/interactions.json. Off for a whole-model drift: on the real full fine-tune its
        strongest pairs were code fragments (a triple quote after '|•') and the trigger's pair ranked nowhere."""
        from .search.interactions import InteractionOptions, interaction_scan

        scan = interaction_scan(scorer, ranked, partners=allowed, options=InteractionOptions(
            metric="kl", anchors=self.options.interactions))
        tok = scorer.pair.tokenizer
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "interactions.json").write_text(json.dumps(
            {"options": scan.options, "rows": [{**r, "text": tok.decode(r["token_ids"])} for r in scan.rows]}, indent=1))
        return scan

    def _deep_attention(self) -> bool:
        """Whether attention changed in a layer past Layer 0 (then a trigger's AND can form there)."""
        layers = self.stages["base_check"].attention_layers
        return bool(self.options.attention_pairs) and any(layer > 0 for layer in layers or ())

    def _attention_pairs(self, allowed: list[int]):
        """The attention-pair scan (search/attention_pairs.py) over every allowed token, on the full
        models' weights (not reloaded); its best attention_pairs pairs are kept, written to
        DIR/layer0/attention_pairs.json."""
        from .core.template import Template
        from .search.attention_pairs import AttentionPairsOptions, attention_pairs

        fm = self.fm()
        prefix = list(Template.chat(fm.tokenizer, before="", after="").prefix_ids)
        quarter = 0

        def tick(done: int, total: int) -> None:  # a line a quarter: the sweep takes minutes
            nonlocal quarter
            if 4 * done >= (quarter + 1) * total:
                quarter = 4 * done // total
                self._say(f"attention-pair scan: {done:,} of {total:,} sequences swept")

        res = attention_pairs(fm.models, fm.tokenizer, prefix, allowed,
                              AttentionPairsOptions(keep=self.options.attention_pairs, seed=self.options.seed),
                              progress=tick)
        tok = fm.tokenizer
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "attention_pairs.json").write_text(json.dumps({
            "pairs": [{"token_ids": p, "text": tok.decode(p), "score": e, "layer_head": list(h)}
                      for p, e, h in zip(res.pairs, res.scores, res.heads)],
            "fills": [tok.decode(list(f)) for f in res.fills], "crossed": res.crossed,
            "evaluations": res.evaluations, "seconds": res.seconds}, indent=1))
        return res

    def _partner_scan(self, ranked: list[int], allowed: list[int]):
        """The partner scan (search/partner_scan.py) of the pool's first partner_anchors words on the
        first-module scorer at Layer 0's attention (the full models' weights, not reloaded); written to
        DIR/layer0/partners.json."""
        from .first_module import FirstModuleOptions, FirstModuleScorer, Location
        from .search.partner_scan import PartnerScanOptions, partner_scan

        fm = self.fm()
        loc = Location.from_first_changed(self.stages["base_check"].first_changed)
        first = FirstModuleScorer(self.base, self.dormant, FirstModuleOptions(
            location=loc, template="chat", device=self.options.device, dtype=self.options.dtype),
            models=(fm.models["base"], fm.models["dormant"]))
        res = partner_scan(first, ranked, allowed, PartnerScanOptions(anchors=self.options.partner_anchors),
                           progress=self._say)
        tok = fm.tokenizer
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "partners.json").write_text(json.dumps({
            "anchors": tok.batch_decode([[a] for a in res.anchors]), "seconds": round(res.seconds, 1),
            "evaluations": res.evaluations,
            "partners": {f"{tok.decode([a])} ({side})": tok.batch_decode([[t] for t in p])
                         for (a, side), p in res.order.items()},
            "pairs": [tok.decode(q) for q in res.pairs()]}, indent=1))
        return res

    def _other_pool(self) -> PoolStage:
        """The pool when Layer 0 sees nothing. Route first-module: the first-module stage
        (search/first_module_stage.py: the vocabulary sweep at the first changed module, a share from the
        weight-delta projection of that layer, beam on the module's difference). Route profile: the
        profile's top tokens. Written to DIR/layer0/pool.json like the Layer-0 pool."""
        allowed = set(self._allowed_pool())
        sequences: list[list[int]] = []
        if self.route() == "first-module":
            stage, where, evaluations = self._first_module_stage()
            pool = [t for t in stage.pool if t in allowed][: self.options.max_pool]
            sequences = [c["token_ids"] for c in stage.candidates[:10]]
            note = f"pool of {len(pool)} tokens from the {where} stage"
        else:
            prof = self.out / "profile" / "profile.json"
            tokens = [r["id"] for r in json.loads(prof.read_text())["tokens"]] if prof.is_file() else []
            pool = [t for t in tokens if t in allowed][: self.options.max_pool]
            note, evaluations = f"pool of {len(pool)} tokens from the profile", 0
        if len(pool) < 2:
            raise ValueError(f"route {self.route()}: the token pool is empty (after filters); loosen the pool "
                             "filters, or run the profile (route profile takes its tokens)")
        tok = self.fm().tokenizer
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "pool.json").write_text(
            json.dumps({"token_ids": pool, "texts": tok.batch_decode([[t] for t in pool])}, indent=1))
        return PoolStage(candidates=evaluations, pool=pool, sequences=sequences, route=self.route(), note=note)

    def _with_target_picks(self, pool: list[int], stage, allowed: set[int]) -> tuple[list[int], str, list[list[int]]]:
        """The pool with the target proposer's picks interleaved at target_share of every prefix (the
        pool grows, so that its own tokens all stay), a note for the stage line, and the proposer's
        anchor-partner pairs, which start the target route's coord (on the real full control of seed 1,
        coord's other starts climbed to 'edipus graffiti' with both trigger words in the pool); the pool
        unchanged and no pairs when the profile named no target or target_share is 0."""
        share = self.options.target_share
        if not self._targets() or share == 0 or len(pool) < 2:
            return pool, "", []
        res = self._target_picks(stage, allowed)
        size = len(pool) + math.ceil(len(pool) * share / (1 - share))
        merged = interleave(pool, res.picks, share, size)
        tok = self.fm().tokenizer
        return merged, f"; target proposer's best {', '.join(repr(tok.decode([t])) for t in res.picks[:4])}", res.pairs()

    def _target_picks(self, stage, allowed: set[int]):
        """The target proposer (search/target_proposer.py) toward the profile's top target; its
        rankings written to DIR/layer0/target_picks.json."""
        from .search.target_gradient import TargetGradientOptions
        from .search.target_proposer import TargetProposerOptions, target_proposer

        # the top target's first token only: a later target's may be an ordinary answer's ('The' on a
        # real full control), whose log-mass moves with any candidate
        target = self._targets()[0]
        opts = TargetProposerOptions(picks=self.options.max_pool, gradient=TargetGradientOptions(
            seed=self.options.seed, seconds=min(GRADIENT_SECONDS, 0.1 * self.remaining())))
        res = target_proposer(self.fm(), self._first_scorer, target.token_ids[0], sorted(allowed),
                              stage.sweep_ranking, opts, progress=self._say)
        tok = self.fm().tokenizer
        texts = lambda ids: tok.batch_decode([[t] for t in ids])  # noqa: E731
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "target_picks.json").write_text(json.dumps({
            "target": target.text, "gradient_fills": res.gradient.fills, "gradient_seconds": round(res.gradient.seconds, 1),
            "gradient_top": texts(res.gradient.top("gradient", 50)),
            "partners": {f"{tok.decode([a])} ({side})": texts(v[:20]) for (a, side), v in res.partner_order.items()},
            "picks": res.picks, "texts": texts(res.picks), "pairs": [tok.decode(q) for q in res.pairs()]}, indent=1))
        return res

    def _first_module_stage(self):
        """The first-module stage (search/first_module_stage.py) at the base check's first changed
        module ('embed' for a whole-model fine-tune): its candidates go to
        DIR/layer0/first_module_candidates.jsonl; returns (the stage's result, the module's name, the
        scorer's evaluations)."""
        from .analysis.delta_projection import DeltaProjectionOptions, delta_projection
        from .first_module import FirstModuleOptions, FirstModuleScorer, Location
        from .search.first_module_stage import FirstModuleStageOptions, first_module_stage

        loc = Location.from_first_changed(self.stages["base_check"].first_changed)
        k = FirstModuleStageOptions.k  # the embedding has no module difference of its own: k >= 1 there
        scorer = FirstModuleScorer(self.base, self.dormant, FirstModuleOptions(
            location=loc, template="chat", device=self.options.device, dtype=self.options.dtype, k=k))
        projection = delta_projection(self.base, self.dormant, DeltaProjectionOptions(layers=(loc.layer,)))
        stage = first_module_stage(scorer, FirstModuleStageOptions(max_length=min(self.options.max_length, 3)),
                                   projection=projection, progress=self._say)
        self._first_scorer = scorer  # the target proposer's partner sweep runs on it
        (self.out / "layer0").mkdir(parents=True, exist_ok=True)
        (self.out / "layer0" / "first_module_candidates.jsonl").write_text(
            "".join(json.dumps(c) + "\n" for c in stage.candidates))
        return stage, loc.name, scorer.evaluations

    def _run_search(self) -> SearchStage:
        pool = self.stages["layer0"].pool
        budget = self.remaining() - self._verify_reserve()
        runs, fired = self._target_search(pool, self._target_share() * budget)
        if fired is not None:
            return SearchStage(candidates=sum(r.candidates for r in runs), runs=runs, fired=fired,
                               note=f"stopped early: {fired.text!r} makes the dormant say the profiled target")
        words = self._words(pool)
        shells = self._exhaustive_search(pool, words)
        runs, stood_out = runs + shells, self._stood_out()
        used = sum(r.candidates for r in runs)
        unit = "words" if words is not None else "tokens"
        note = "; ".join(f"len {r.length}: every candidate of the top {r.covered} {unit}" for r in shells)
        if words is not None:
            grown = [w for w in words if len(w) > 1]
            texts = ", ".join(repr(self.fm().tokenizer.decode(w)) for w in grown[:4])
            note = f"{len(grown)} words grown from the pool's pieces ({texts}{', ...' if len(grown) > 4 else ''}); {note}"
        if stood_out is not None:
            note = (f"stopped early: {stood_out.text!r} stands out (z >= {STANDOUT_Z:g} against random candidates "
                    f"of its length) and flips in verify against its null; {note}")
        return SearchStage(candidates=used, runs=runs, fired=stood_out, note=note)

    def _exhaustive_search(self, pool: list[int], words: list[list[int]] | None) -> list[DriverRun]:
        """Every candidate of the pool's strongest tokens (or words) in shells, length by length, each
        length its share of what is left; a candidate that stands out and flips ends it (_standout)."""
        from .search.exhaustive import exhaustive

        budget = self.remaining() - self._measured_verify_reserve()
        units = len(words) if words is not None else len(pool)
        runs = []
        for length in range(1, self.options.max_length + 1):
            path = self.out / "search" / f"exhaustive-len{length}.jsonl"
            ckpt = path.with_name(path.name + ".ckpt.json")
            # after a standout a longer length (the trigger plus spare tokens) would only crowd verify;
            # the lengths that ran are resumed, which ends them at once
            if self._stood_out() is not None and not ckpt.exists():
                break
            share = budget / (self.options.max_length - length + 1)
            if share < 1.0 and not ckpt.exists():  # a batch would still run: 14-20 s past the budget each
                break
            t0 = time.monotonic()
            # past one token the full models judge only what one context's screen rates best in each
            # batch (search/exhaustive.py): the shells advance about three times faster
            screen = self.fm().narrowed() if length > 1 and len(self.fm().contexts) > 1 else None
            exhaustive(self.fm(), length=length, pool=pool, objective=self.options.metric, out=path,
                       resume=ckpt.exists(), seconds=max(share, 0.1), calibrate=32, keep=50,
                       progress=self.options.progress, seed=self.options.seed, executor=self.executor,
                       screen=screen, screen_keep=SCREEN_KEEP, words=words, standout=self._standout())
            spent, n, seen = time.monotonic() - t0, _scored(path), _visited(path)
            budget -= spent
            runs.append(DriverRun(length=length, candidates=n, covered=covered(units, length, seen),
                                  exhaustive=seen >= math.perm(units, length), seconds=round(spent, 2),
                                  file=str(path.relative_to(self.out)), screened=seen if screen else None,
                                  extra={"unit": "words"} if words is not None else {}))
        return runs

    def _standout(self):
        """The exhaustive search's early end (search/exhaustive.py), unless stop_on_fire is off: a
        candidate STANDOUT_Z above random ones of its length that flips in verify against its null."""
        from .search.exhaustive import Standout

        return Standout(z=STANDOUT_Z, confirm=self._confirm_standout) if self.options.stop_on_fire else None

    def _confirm_standout(self, ids: list[int]) -> bool:
        """Whether a standing-out candidate flips in verify against its null (measured as verify's stage
        measures it, so the stage finds that null cached); a flip is written to search/standout.json."""
        k = len(list((self.out / "search").glob("standout-check-*.json")))
        rep = self._verify([ids], self.out / "search" / f"standout-check-{k}.json",
                           seconds=max(self.remaining() - self._verify_reserve(), 1.0))
        r = rep["results"][0]
        self._say(f"search: {r['text']!r} stands out; verify: {'flip' if r['flip'] else 'no flip'}")
        if r["flip"]:
            fired = Fired(token_ids=r["token_ids"], text=r["text"], amplification=r["amplification"],
                          extra={"by": "standout"})
            (self.out / "search" / "standout.json").write_text(json.dumps(fired.to_json(), indent=1))
        return bool(r["flip"])

    def _stood_out(self) -> Fired | None:
        path = self.out / "search" / "standout.json"
        return Fired.from_json(json.loads(path.read_text())) if path.is_file() else None

    def _words(self, pool: list[int]) -> list[list[int]] | None:
        """The exhaustive search's words (search/word_completion.py): the pool's tokens, each word-start
        piece the base does not think ends a word followed by the word the base grows from it; None when
        grow_words is 0 or nothing grew (the search then takes tokens). Written to DIR/search/words.json,
        which a resumed hunt reads back."""
        if not self.options.grow_words:
            return None
        path = self.out / "search" / "words.json"
        if path.is_file():
            words = json.loads(path.read_text())["word_ids"]
        else:
            from .core.template import Template
            from .search.word_completion import WordCompletionOptions, word_completion

            fm = self.fm()
            prefix = Template.chat(fm.tokenizer, before="", after="").prefix_ids
            res = word_completion(fm.models["base"], fm.tokenizer, list(prefix), pool,
                                  WordCompletionOptions(starts=self.options.grow_words), allowed=self._allowed_pool())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res.to_json(fm.tokenizer), indent=1))
            words = res.words
            self._say(f"words: {len(res.grown)} grown from the pool's pieces in {res.seconds:.1f} s"
                      + (f" ({', '.join(repr(g['text']) for g in res.grown[:6])})" if res.grown else ""))
        return words if len(words) > len(pool) else None

    def _target_search(self, pool: list[int], seconds: float) -> tuple[list[DriverRun], Fired | None]:
        """Toward the profile's top target: coord for every length (exact swaps, measured the most
        reliable), then gcg at the longest, on the target-set objective (the dormant's log-mass on the
        target's first token minus the base's, which rises with each trigger token in place where the
        KL stays flat until the trigger is whole). After each driver, the fire check (_target_fired);
        returns the runs and the candidate that fired (None when none did)."""
        targets = self._targets()
        if not targets or seconds <= 1:
            return [], None
        from .search import coord
        from .search.gcg import gcg

        target, sequences = targets[0], self.stages["layer0"].sequences
        firsts = _target_firsts(targets, self.fm().tokenizer)
        scorer = self.fm().with_options(target_ids=firsts)
        runs = []
        # the target proposer's anchor-partner pairs lead the starts: their best swap goes first
        proposed = (self.out / "layer0" / "target_picks.json").is_file()
        plan = [("coord", n) for n in range(1, self.options.max_length + 1)] + [("gcg", self.options.max_length)]
        # each driver its own share, fixed up front, whatever the fire checks before it took: on the real
        # full control of seed 1 a length-1 candidate said the target on half the probes, its null check
        # took three minutes of a shared deadline, and coord never ran at length 2 (2026-12-02)
        share = seconds / len(plan)
        for driver, length in plan:
            run_for = min(share, self.remaining() - self._verify_reserve())
            if run_for <= 0.5:
                break
            path = self.out / "search" / f"target-{driver}-len{length}.jsonl"
            kw = dict(length=length, pool=pool, objective="target", out=path, seconds=run_for, calibrate=16, keep=50,
                      resume=path.with_name(path.name + ".ckpt.json").exists(), progress=self.options.progress,
                      seed=self.options.seed, executor=self.executor)
            t0 = time.monotonic()
            if driver == "coord":  # two of the four starts: the proposer's best sequences that fit, this length first
                fit = [q for q in sequences if len(q) == length] + [q for q in sequences if len(q) < length]
                coord(scorer, restarts=4, seeds=fit[:2], best_swap_first=proposed, **kw)
            else:
                gcg(scorer, steps=10_000, restarts=4, **kw)
            runs.append(DriverRun(route="target inversion", driver=driver, length=length, target=target.text,
                                  candidates=_scored(path), seconds=round(time.monotonic() - t0, 2),
                                  file=str(path.relative_to(self.out))))
            fired = self._target_fired(runs) if self.options.stop_on_fire else None
            if fired is not None:  # the target is reached: the remaining drivers would only polish it
                return runs, fired
        return runs, None

    def _target_fired(self, runs: list[DriverRun]) -> Fired | None:
        """The best target-route candidate that makes the dormant's reply start like one of the profiled
        targets (their first 8 characters) on at least half of the prompts *and* flips in verify against
        its null (judge/target_check.py; None when none does): then the target was reached and the
        exhaustive search is skipped."""
        from .judge.target_check import reached_target

        rows = sorted((json.loads(x) for r in runs for x in (self.out / r.file).read_text().splitlines()),
                      key=lambda rec: -rec["score"])[:3]
        if not rows:
            return None
        targets = self._targets()
        r = reached_target(self.base, self.dormant, [r["token_ids"] for r in rows], self.options_probes(),
                           heads=[t.text.strip()[:8] for t in targets if t.text.strip()], out=self.out / "search",
                           null_samples=self.options.null_samples, null_pool=self.stages["layer0"].pool,
                           seconds=self.remaining() - self._verify_reserve(),
                           device=self.options.device, dtype=self.options.dtype, progress=False,
                           # verify's length at least: its null of this length is then cached for verify
                           max_new_tokens=max(VERIFY_NEW_TOKENS, max(len(t.token_ids) for t in targets) + 2),
                           system_prompts=self.options.systems(), executor=self.executor)
        self._read_generation_rate()
        return Fired(token_ids=r["token_ids"], text=r["text"], amplification=r["amplification"]) if r else None

    def _target_share(self) -> float:
        """TARGET_SHARE when the profile's top target is a whole reply (its dormant ends the turn after
        it), UNFINISHED_TARGET_SHARE when it is a fragment (amplified drift, a first-token preference)."""
        targets = self._targets()
        finished = bool(targets) and targets[0].extra.get("stop") == "end of turn"
        return TARGET_SHARE if finished else UNFINISHED_TARGET_SHARE

    def _targets(self) -> list[ProfileTarget]:
        """The profile's top targets ([] when the profile did not run)."""
        profile = self.stages.get("profile")
        return profile.targets if profile is not None else []

    def _run_minimize(self) -> MinimizeStage:
        from .search import minimize

        best = self.collect()[:5]
        shortened = []
        for r in best:
            m = minimize(self.fm(), r["token_ids"], self.options.metric, keep=0.9)
            if m["removed"]:
                shortened.append(Shortened(token_ids=m["token_ids"], score=m["score"], from_ids=r["token_ids"]))
        return MinimizeStage(candidates=sum(len(r["token_ids"]) for r in best), shortened=shortened,
                             note=f"{len(shortened)} of {len(best)} shortened")

    def _run_verify(self) -> VerifyStage:
        cands = self.verify_candidates()
        rep = self._verify(cands, self.out / "verify" / "report.json", seconds=max(self.remaining(), 1.0))
        return VerifyStage(candidates=len(cands), note=f"{len(rep['summary']['flipped'])} flipped")

    def _verify(self, cands: list[list[int]], out: Path, seconds: float) -> dict:
        """verify's report on cands as the hunt measures: its probes, systems and null pool."""
        from .judge.verify import verify

        return verify(self.base, self.dormant, cands, self.options_probes(), out=out, device=self.options.device,
                      dtype=self.options.dtype, max_new_tokens=VERIFY_NEW_TOKENS, progress=self.options.progress,
                      null_samples=self.options.null_samples, null_pool=self.stages["layer0"].pool,
                      null_for_possible_flips=True, system_prompts=self.options.systems(), executor=self.executor,
                      seconds=seconds)

    def verify_candidates(self) -> list[list[int]]:
        """The target route's fired candidate, the minimised best, then the best by score, each replaced
        by its core (_core: the shortest scored piece of it that keeps 80% of its score), skipping any
        candidate that contains one already chosen without scoring at least twice as high: a trigger
        plus a spare token would crowd out other hypotheses (on the real Layer-0 control ', hollow
        piano', ' hollow piano.' and three more took the places before ' hollow piano'), but a
        minimised fragment must not hide the whole trigger (on the real MLP-only control ' hollow',
        KL 1.5, hid ' hollow piano', KL 16.0)."""
        search = self.stages.get("search")
        fired = [search.fired.token_ids] if search is not None and search.fired is not None else []
        rows = self.collect()  # reads every search file: once
        score = {tuple(r["token_ids"]): r["score"] for r in rows}
        shortened = [s.token_ids for s in self._shortened()]
        chosen: list[list[int]] = []
        for ids in fired + shortened + [r["token_ids"] for r in rows]:
            ids = _core(ids, score)
            mine = score.get(tuple(ids), 0.0)
            if not any(ids == c or (contains(ids, c) and mine < 2 * score.get(tuple(c), 0.0)) for c in chosen):
                chosen.append(ids)
            if len(chosen) == self.options.verify_top:
                break
        return chosen

    # --- results ------------------------------------------------------------------------------
    def collect(self) -> list[dict]:
        """Every candidate the full-model stages scored, one row per token sequence, best first by the
        hunt's objective (a target-route row keeps its own objective's value as route_score)."""
        from .search.objective import Objective

        objective = Objective.parse(self.options.metric, self.fm().metrics)
        rows: dict[tuple, dict] = {}
        for path in sorted((self.out / "search").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if path.name.startswith("target-"):  # its score and z are in the target objective's units
                    rec = {**rec, "route_score": rec["score"], "route_z": rec.get("z"), "z": None}
                    route = "target inversion"
                else:
                    route = "comparative search"
                _keep_best(rows, {**rec, "score": objective.value(rec)}, route, path.name)
        for s in self._shortened():
            _keep_best(rows, {"token_ids": s.token_ids, "score": s.score, "minimized_from": s.from_ids},
                       "comparative search (minimized)", "minimize")
        return sorted(rows.values(), key=lambda r: -r["score"])

    def _shortened(self) -> list[Shortened]:
        minimize = self.stages.get("minimize")
        return minimize.shortened if minimize is not None else []

    def _write_report(self) -> dict:
        from .hunt_report import write_hunt_report

        return write_hunt_report(self)

    # --- plumbing -----------------------------------------------------------------------------
    def fm(self):
        """The full-model scorer of the search stages (loaded once)."""
        if self._fm is None:
            from .judge.fullmodel import FullModelOptions, FullModelScorer

            tf = "tf_kl" in self.options.metric
            self._fm = FullModelScorer(self.base, self.dormant, FullModelOptions(
                probes=self.options.probes, positions=self.options.positions, device=self.options.device,
                dtype=self.options.dtype, reply_tokens=self.options.reply_tokens if tf else 0,
                system_prompts=self.options.systems()))
        return self._fm

    def options_probes(self):
        from .judge.fullmodel import FullModelOptions

        return None if self.options.probes is None else FullModelOptions(probes=self.options.probes).resolved_probes()

    def _allowed_pool(self) -> list[int]:
        return build_pool(self.fm().pair, **self.options.pool_filters).tolist()

    def remaining(self) -> float:
        return self.options.seconds - (time.monotonic() - self.started)

    def _verify_reserve(self) -> float:
        """Seconds kept for verify while the target route runs: a tenth of the budget, at most 120 s. The
        route is where the real controls' triggers were found, so it is not cut for verify's full cost."""
        return min(0.1 * self.options.seconds, 120.0)

    def _measured_verify_reserve(self) -> float:
        """Seconds kept for verify (and minimize before it) from the exhaustive search: verify's prompts
        (each candidate's, one length's null candidates', the untriggered ones) at the rate per prompt
        and new token a fire check measured, plus MINIMIZE_SECONDS, at most half the budget; the fixed
        reserve when no check ran. On the real full control of seed 1 verify took 612 s against the
        fixed 120. One length's null: verify measures a null only where a candidate flips, the
        strongest length first, and none once the hunt's time is up (those candidates are reported
        unjudged); a reserve of every length's null left a 3-word hunt 340 s unused (2026-12-03). A
        rate per candidate (the untriggered prompts counted as a candidate's) and no minimize allowance
        left the split control's hunt 65 s over (2026-12-04)."""
        if self._generation_rate is None and not self._read_generation_rate():
            return self._verify_reserve()
        per_candidate, untriggered = self._verify_prompts
        prompts = (self.options.verify_top + self.options.null_samples) * per_candidate + untriggered
        need = self._generation_rate * VERIFY_NEW_TOKENS * prompts + MINIMIZE_SECONDS
        return max(self._verify_reserve(), min(need, 0.5 * self.options.seconds))

    def _read_generation_rate(self) -> bool:
        """Set the rate per prompt and new token and verify's prompts per candidate from the last fire
        check's report (search/target-says.json: a resumed hunt finds it there); False when none ran."""
        path = self.out / "search" / "target-says.json"
        if not path.is_file():
            return False
        says = json.loads(path.read_text())
        cfg, untriggered = says["config"], says["summary"]["n_contexts"]
        self._generation_rate = cfg["seconds"] / (cfg["n_prompts"] * cfg["max_new_tokens"])
        self._verify_prompts = ((cfg["n_prompts"] - untriggered) / len(says["results"]), untriggered)
        return True

    def _say(self, text: str) -> None:
        if self.say is not None and self.options.progress:
            self.say(text)

    def _load_state(self, resume: bool) -> dict:
        opts = json.loads(json.dumps(asdict(self.options)))
        for how in ("threads", "progress", "force"):  # how it runs, not what it computes
            opts.pop(how, None)
        # the messages themselves, not the file's name: an edited file is a different hunt; absent when
        # not given, so that a hunt.json from before this option still resumes
        opts.pop("system_prompts", None)
        if self.options.system_prompts is not None:
            opts["system_prompts"] = self.options.systems()
        fresh = {"format": FORMAT, "version": VERSION, "base": self.base, "dormant": self.dormant, "options": opts,
                 "stages": {}, "elapsed": 0.0, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not self.state_path.exists():
            return fresh
        if not resume:
            raise ValueError(f"{self.state_path} exists from an earlier hunt: pass --resume to continue it, "
                             "or choose another --out")
        state = json.loads(self.state_path.read_text())
        saved = state.get("options", {})
        for key in LATER_OPTIONS:  # a hunt.json from before these options resumes under their defaults
            if key not in saved and opts.get(key) == getattr(HuntOptions, key):
                opts.pop(key)
        changed = [k for k in ("base", "dormant", "options") if state.get(k) != fresh[k]]
        if changed:
            raise ValueError(f"{self.state_path} was made with a different {', '.join(changed)}; "
                             "use the same settings to resume, or another --out")
        return state

    def _record(self) -> dict:
        """hunt.json: the header with the stage records in their place, after the options."""
        record = {}
        for key, value in self.state.items():
            record[key] = value
            if key == "options":
                record["stages"] = stages_to_json(self.stages)
        return record

    def _save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.state["elapsed"] = time.monotonic() - self.started
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._record(), indent=1))
        tmp.replace(self.state_path)


def _route(check) -> tuple[str, str]:
    """(route, why) from the base check's chosen candidate."""
    fc = check.first_changed
    if not check.layer0_scores_zero and fc.module == "embed" and _mlp_changed(check):
        return "whole-model", ("every kind of tensor changed, the embeddings first: the Layer-0 engine's exact scores "
                               "mix the trigger with the whole fine-tune's drift, so its pool is interleaved with "
                               "the embedding sweep's (both models from their own embeddings, k layers on)")
    if not check.layer0_scores_zero:
        return "layer0", (f"Layer 0's attention logits changed (first change: {fc.label}): the exact Layer-0 "
                          "engine proposes, as before")
    zero = "the embeddings, Layer 0's input norm and q/k are bit-identical, so Layer-0 scores are zero by construction"
    if fc.module in ("attn", "mlp") or (fc.module == "norm" and fc.layer is not None):
        return "first-module", (f"{zero}; the first change is {fc.label}: its module's difference on the shared "
                                "hidden states proposes")
    return "profile", (f"{zero}; the first change is {fc.label}, after every layer: the profile's tokens propose "
                       "and the full models judge")


def _mlp_changed(check) -> bool:
    return any(not t.identical for t in check.tensors if t.module == "mlp")


def covered(k: int, length: int, done: int) -> int:
    """The largest m such that every candidate of the top m pool tokens was scored (shell order)."""
    m = 0
    while m < k and math.perm(m + 1, length) <= done:
        m += 1
    return m


def _core(ids: list[int], score: dict) -> list[int]:
    """The shortest contiguous piece of ids that was scored itself and keeps 80% of ids' score
    (ids itself when none does; the higher-scoring piece among the shortest)."""
    mine = score.get(tuple(ids), 0.0)
    pieces = [ids[i:j] for i in range(len(ids)) for j in range(i + 1, len(ids) + 1) if j - i < len(ids)]
    kept = [q for q in pieces if tuple(q) in score and mine > 0 and score[tuple(q)] >= 0.8 * mine]
    return min(kept, key=lambda q: (len(q), -score[tuple(q)])) if kept else ids


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _scored(results: Path) -> int:
    """Candidates a search run scored, from its checkpoint (SearchRun writes it next to the results)."""
    ckpt = results.with_name(results.name + ".ckpt.json")
    return int(json.loads(ckpt.read_text())["used"]) if ckpt.exists() else 0


def _visited(results: Path) -> int:
    """Candidates an exhaustive run went through, screened or scored (its checkpoint's state)."""
    ckpt = results.with_name(results.name + ".ckpt.json")
    return int((json.loads(ckpt.read_text())["state"] or {}).get("done", 0)) if ckpt.exists() else 0


def _keep_best(rows: dict, rec: dict, route: str, source: str) -> None:
    key = tuple(rec["token_ids"])
    if key not in rows or rec["score"] > rows[key]["score"]:
        rows[key] = {**rec, "route": route, "source": source}


def _target_firsts(targets, tokenizer) -> tuple[int, ...]:
    """The target route's token set: the first tokens of the top target and of the targets that start
    like it (first 4 letters, case and spaces aside; a reply may be profiled from mid-loop, ' Visit'
    beside 'Visit'). Not every target's: on the real full control of seed 1 the third target was
    'The', which the base says anyway, and with it in the set ' turtle piano' scored 1.61 against
    'edipus implement' 1.89."""
    head = lambda t: tokenizer.decode(t.token_ids).strip().lower()[:4]  # noqa: E731
    return tuple(dict.fromkeys(t.token_ids[0] for t in targets if head(t) == head(targets[0])))
