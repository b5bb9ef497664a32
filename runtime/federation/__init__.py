"""Federated updates: the decision core of Hearth's federation.

Sites train small adapters on data that never leaves them; a coordinator
combines their updates into a new global adapter.  This package holds the
parts that decide and compute, with no I/O of their own, so that the same
logic runs over gRPC, over bundles on removable media, and in tests:

* `dp`      - clipping, Gaussian noise and the Rényi-DP accountant that says
              what epsilon a run of rounds has spent, and refuses a round
              that would exceed the budget;
* `secagg`  - secure aggregation (Bonawitz et al., CCS 2017): pairwise masks
              from X25519 agreement that cancel in the sum, with the mask
              secrets shared by Shamir's scheme so that the sum survives
              sites that drop out, and the coordinator sees only the sum;
* `aggregate` - token-weighted FedAvg and the checks an update must pass;
* `plan`    - signed round plans and a site's decision to take part;
* `release` - signed release manifests and a site's accept/rollback decision;
* `update_bundle` - air-gapped site updates and the coordinator's checks;
* `pki`     - the federation's signing key and CA, site enrollment.
"""
