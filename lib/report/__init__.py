"""What a run found: summary, host-proof facts, publishing, runs side by side.

=================  ================================================================
module             concept
=================  ================================================================
``cpu_costs_text`` the CPU cost projection's checks as a docs section
``cross_model``    layer profiles of several runs by relative depth
``facts``          host-proof facts and generated prose of a run
``host_spread``    how far another host moves a book: two runs of one config compared
``power_text``     what the verdicts can detect: the simulation table as text
``publish``        one run's figures, notebooks and README section
``speed_text``     the sampling and capture benchmarks as a docs section
``summary``        our numbers beside the study's
=================  ================================================================
"""
