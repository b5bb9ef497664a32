"""Federated adapter training: sites improve the adapter they serve from
their own text, which never leaves them; a coordinator combines their
clipped, noised updates into a signed release (docs/federation.md).

The parts that decide what to trust and compute do no I/O, so the same
logic runs over gRPC, over files on removable media, and in tests:

* `coordinator` - a round from the coordinator's side: signed plan,
                  the updates that count, FedAvg, privacy budget, the
                  candidate, release;
* `gate`        - the candidate's round trip: the sites' signed evaluations,
                  the promote/withhold decision, the signed rejection record;
* `participant` - a site's update: train, clip, add noise, lay it out;
* `plan`        - signed round plans, and a site's decision to answer one:
                  its privacy floor (`SitePolicy`) and its ledger of answered
                  plans (each is answered at most once);
* `release`     - signed release manifests, a site's accept/rollback
                  decision and high-water mark;
* `dp`          - clipping, Gaussian noise, the Rényi-DP accountant;
* `secagg`      - secure aggregation (Bonawitz et al., CCS 2017): pairwise
                  masks that cancel in the sum, Shamir-shared so that the sum
                  survives sites that drop out;
* `aggregate`   - token-weighted FedAvg and the checks an update must pass;
* `update_bundle`, `documents` - sealed update files, release files, site
                  requests and kits;
* `pki`         - the federation's signing key and CA, site certificates;
* `reports`     - a site's signed reports to its coordinator (drift alarms,
                  automatic rollbacks);
* `policy`      - when the coordinator service starts a round: schedule,
                  daily times, the drift trigger, its limits, and the wait
                  for the sites' carbon-aware training windows.

Around them, written once for every transport:

* `site_loop`   - the site's round (accept -> record -> train -> send ->
                  evaluate the candidate -> apply the release) against
                  `CoordinatorLink`; outside its training windows
                  (energy/windows.py) a site defers instead, and its
                  training is metered;
* `rounds`      - the coordinator's round steps on its store
                  (`CoordinatorRounds`) and `drive_round`, against
                  `SiteExchange`;
* `site_training` - a site's data sets (and the reserved `traffic`: prompts
                  the daemon kept), trainer and evaluation;
* `site_agent`  - the daemon's side of a joined site: signed drift-alarm
                  reports, auto-apply of new releases with an in-process hot
                  swap, and automatic rollback of a release that does worse
                  on live traffic (the decision, `judge_release`, is pure);
* `state`       - every key, record, ledger, release and update, sealed in
                  the store; `enrollment` - init, enroll, issue, join.

The transports implement the two protocols: `online` (coordinator:
GrpcExchange and the Federation service, mTLS site identity) with
`online_site` (site: GrpcLink, participate_forever), `serve` (`hearth fed
coordinator`: its gRPC server, and `--rounds N`), `service` (`--serve`: rounds
by `policy`, ReportDesk taking in site reports); and `files` (FileLink,
FileExchange, the plan/collect/publish commands, report files).
`reports` holds the signed site reports (drift alarm, rollback).
`train/` is the PyTorch LoRA trainer (the `hearth[train]` extra);
`simulate` and `corpus` run a whole federation on one machine.
"""
