"""Energy per request (docs/energy.md): meters, the attribution that
conserves each window's energy, carbon, and the daemon's accountant over the
engines' step logs (native/src/steplog.c).

    meters.py       cumulative energy counters: RAPL (powercap sysfs, with
                    wraparound), NVML (counter, or integrated power), and an
                    estimate from CPU time and a configured wattage.  Every
                    reading carries its source; an estimate is never passed
                    off as a measurement.
    attribution.py  splits one window's measured energy among the requests
                    that ran in it: the dynamic part by token work (prefill
                    and decode weighted apart), the idle part by each
                    request's share of the time; what no request covers is
                    idle energy.  The parts add up to the window's total.
    weights.py      the prefill/decode weights and idle power, fitted by a
                    regression over windows
    carbon.py       gCO2e from energy and an operator-given grid intensity
                    (a constant or a time-of-day table; never looked up)
    accountant.py   windows: one meter read and one drain of every engine's
                    step log each; the split; per-request figures, final
                    once the window of the request's end closes; totals for
                    Prometheus; the weights refitted from the windows
    service.py      the daemon's side: the meter chosen at start, the window
                    loop, settle() (a request's end closes the window, so its
                    final chunk carries its whole energy), weights sealed
    windows.py      carbon-aware training windows of a federation site: time
                    ranges and/or "below N g/kWh" against the grid table;
                    inside now? when does it open next? (no clock inside)
    report.py       `hearth energy report`: totals per model and adapter from
                    the audit log's request records
"""
