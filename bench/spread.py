"""Section — spread: the drain's 10,000 deliveries spread over 1,000 destinations (100
accounts x 10 destinations, 10 events per account, posted interleaved by 16 clients) through the
same production topology, against the concentrated case (1 account x 10 destinations, 1,000
events) measured in the same run: the drain section's figure when it ran before, else measured
here first. Batching must pay off when no destination has a backlog too."""

from bench import drain
from bench.common import Context, Section, fmt, knob, ratio, verdict

ACCOUNTS = knob("BENCH_SPREAD_ACCOUNTS", 100)
TARGET_SHARE = 0.50


def run(ctx: Context) -> Section:
    events_per_account = max(1, drain.EVENTS // ACCOUNTS)
    section = Section(
        "spread",
        f"{ACCOUNTS * events_per_account * drain.DESTINATIONS:,} deliveries over "
        f"{ACCOUNTS * drain.DESTINATIONS:,} destinations vs one account",
    )
    concentrated_rate = ctx.figures.get("drain_rate")
    if concentrated_rate is None:
        concentrated = drain.measure(
            ctx, "concentrated", accounts=1, events_per_account=drain.EVENTS
        )
        concentrated_rate = ctx.figures["drain_rate"] = concentrated.rate
        ctx.figures["drain_seconds"] = concentrated.seconds
        drain.report(section, concentrated)
        where = "measured in this section"
    else:
        where = "from the drain section of this run"
    spread = drain.measure(ctx, "spread", accounts=ACCOUNTS, events_per_account=events_per_account)
    section.commands.append(spread.command)
    share = spread.rate / concentrated_rate if concentrated_rate else 0.0
    section.row(
        f"spread: {spread.expected:,} deliveries all success",
        f"{fmt(spread.seconds, 1)} s",
        f"concentrated {fmt(ctx.figures.get('drain_seconds', float('nan')), 1)} s",
    )
    section.row(
        "spread drain rate vs concentrated",
        f"{fmt(spread.rate)} /s",
        f"concentrated {fmt(concentrated_rate)} /s",
        ratio(spread.rate, concentrated_rate),
        f"≥ {TARGET_SHARE:.0%} of concentrated",
        verdict(spread.complete and share >= TARGET_SHARE, f"{share:.0%}"),
    )
    drain.report(section, spread)
    section.notes.append(f"Concentrated reference: {where}.")
    return section
