"""The command line: thin Invoke tasks over :mod:`deployer.operations`, and their renderers.

Imports point one way (nothing outside this package imports it, except :mod:`deployer.tasks`, the public
collection)::

    program  (the `deployer` console script: deployer's options only, usage errors, did-you-mean)
    collection <- release_tasks, ops_tasks, trust_tasks, init_task   (the tasks)
    run      (one definition of the shared flags: rollout_task, fleet_task; Common/Target; finish)
    flags    (flag values checked before any work)       render, render_ops  (people's output, JSON)
    common   (output rule, load, fail, hints in deployer's words, interrupts)
"""
