"""Drift watch: is live traffic still like the traffic a model version was
deployed on?  (docs/drift.md is the manual.)

The engine computes a sampled request's signals (native/src/signals.c: prompt
NLL, first-token entropy, the pooled prompt embedding) and they arrive with
its RequestFinished event.  The parts here, all but the last without I/O:

    signals.py     the table of per-request signals (scalar or projected vector)
    reference.py   a version's reference: its first K observations in memory,
                   persisted only as aggregates (quantiles, mean, covariance)
    statistics.py  two-sample statistics and permutation p-values, (k+1)/(B+1)
    calibrate.py   the alarm threshold, calibrated by simulating null streams
                   from the reference to a target expected run time (ERT)
                   between false alarms, jointly over all signals
    monitor.py     one model version's monitor: reference → live window →
                   statistics every `stride` requests → alarm
    service.py     the daemon's DriftService: a monitor per (model, adapter),
                   fed off the event loop; sealed aggregates in the store,
                   DriftDetected on the bus and in the audit log, reset
    retain.py      opt-in ([drift] retain_for_training): sampled prompts kept
                   sealed per subject under the audit log's erasable keys,
                   shredded after the retention period; the `traffic` data set

Why calibration by simulation: a windowed test evaluated every few requests is
a sequence of dependent tests, so a per-test alpha says nothing about how
often an operator is woken.  The threshold on the combined (minimum over
signals) null tail probability is instead chosen so that simulated null
streams, resampled jointly across signals from the reference (and with a
resampled reference, so that the reference's own sampling error counts), run
`ert_requests` requests on average before a false alarm.  Correlated signals
are thereby corrected for exactly, not by a Bonferroni bound.
"""
