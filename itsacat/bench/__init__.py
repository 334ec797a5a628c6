"""The benchmarks, in one place. Each writes what it measured to bench/results/.

- `plans`: every way of distributing a step over invocations against the reference
  trainer, counted per epoch on a fresh embedded stack (`itsacat bench`, `make bench`;
  `--scaling` for the sweep over layer-1 width and examples, `make bench-scaling`).
- `projection`: those counts turned into the time and cost of a full run on AWS, with the
  functions' memory, concurrency and timeouts read from templates/template.yaml.
- `optimizers`: the default network on the cat data with each optimiser
  (`python -m itsacat.bench.optimizers`, `make bench-optimizers`).
- `api_load`: many concurrent clients, ordinary and hostile, against `itsacat serve`
  (`python -m itsacat.bench.api_load`, `make bench-api`).
- `chaos`: `kill -9` of the trainer, the runtime or the emulator at random moments of runs
  that must still equal the reference (`python -m itsacat.bench.chaos`).
- `snapshot_lock`: how long a snapshot of the emulator's data holds its request lock
  (`python -m itsacat.bench.snapshot_lock`).
- `processes`: the stack's processes as /proc shows them (what `chaos` kills).

Every benchmark that trains on the cat data takes `--dataset PATH`, else the copy that
`itsacat dataset fetch` cached under $ITSACAT_HOME; none reads outside the checkout.
"""
