"""Running the book: stages, the grid, notebook kernels, locks lent, costs, JupyterLab.

===================  ================================================================
module               concept
===================  ================================================================
``cost_model``       the expected cost of a full run on one GPU, from a rehearsal
``cpu_costs``        the cost of a run on this CPU, projected from a measured run
``grid``             runs the grid's notebooks with papermill, locally or on Dask
``grid_plan``        the grid's notebook executions, what each reads, what a run has
``jupyter_kernels``  notebooks run by papermill, one kernel each, or on Dask
``lab_checkpoints``  JupyterLab's checkpoints in one ignored folder, not in run folders
``process_costs``    wall time, peak memory, disk written of a process tree
``stage_costs``      per-stage costs of a run: throughput read from its outputs
``stages``           what each stage produces, and whether a run holds it
===================  ================================================================
"""
