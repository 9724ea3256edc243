"""deception-saes: the shared package of the research book.

One module per concept, on floors: a module imports only modules of lower floors, so the
package has no import circle, the SAE model never imports its trainer, and a reader can start
at the bottom. ``tests/test_architecture.py`` reads this table and checks the code against it.

=====  ====================  ===============================================================  ============
floor  module                concept                                                          notebook
=====  ====================  ===============================================================  ============
0      ``config``            the typed run config and the book's vocabulary                   all
0      ``stats``             metrics, bootstrap CIs, the paired test, Holm                    05, 06
0      ``runtime``           thread limits and progress bars                                  all
0      ``runlock``           one writer per run directory: an OS lock, lent to kernels        all
0      ``gemini_client``     a Gemini client: JSON answers, retries, the key guarded          02, 08
0      ``text_baseline``     TF-IDF features of the completion text                           05
0      ``costs``             wall time, peak memory, disk written of a process tree           make rehearsal
1      ``kernel``            notebooks run by papermill, one kernel each, or on Dask          make book
1      ``latent_stats``      per-latent AUROC with CIs, q-values, held-out scenarios          08
1      ``fileio``            files a kill cannot corrupt: atomic writes, JSON lines           all
1      ``scenarios``         the nine scenario prompts (data/scenarios.yaml)                  01, 02
1      ``sae``               the SAE model and its SAELens on-disk format                     04-08
1      ``logistic``          the exact fast solver of the study's probe                       05
1      ``style``             theme, colours, names and saving of every figure                 all
1      ``registry_models``   trained models shipped in PyPI packages (GGUF), converted once   01, 03
2      ``rundir``            the run directory: paths, config, seeds, caches                  all
2      ``organism``          the embedded model organism with planted behaviour               (default)
2      ``published``         the study's published numbers and SAE format                     07, 10
2      ``judges``            the judge interface and the keyword judge                        02
2      ``sae_kernels``       the SAE trainer's hand-written step and fused Adam               04
2      ``probe``             the study's probe, its cross-validation, monitor thresholds      05, 06
2      ``figures``           figures of stages 02-04                                          02-04
2      ``probe_figures``     figures of stages 05-06                                          05, 06
2      ``latent_figures``    figures of stages 08-09                                          08, 09
3      ``dataset``           activations joined with labels for later stages                  04-09
3      ``dashboard``         the self-contained HTML page of one SAE's latents                08
3      ``random_models``     random-weight models of the study's shapes                       rehearsal
3      ``gemini``            the Gemini judge: prompt, answers, per-answer cache              02
3      ``sae_trainer``       training one SAE on a matrix of activations                      04
3      ``controls``          permutation p-values, scenario-identity probe                    05
3      ``cross_model``       layer profiles of several runs by relative depth                 10
4      ``sae_features``      SAE codes of completions on the SAE's own input kind             05-08
4      ``models``            loading causal LMs, decoder layers, residual hooks               01, 03
4      ``labelling``         the labelling stage, label counts, agreement                     02
4      ``layer_profile``     the layer profile stage and its controls                         05
5      ``activations``       true resid_post capture of every layer                           03
5      ``sae_metrics``       FVU, L0, dead latents, the model's loss with the SAE spliced in  04
5      ``leakage``           SAEs that never saw the probe's test completions                 05
5      ``layer_tests``       selection-aware peak layers, layers vs the text baseline         05
5      ``sae_verdicts``      SAE vs raw and leakage verdicts across seeds                     05
5      ``latents``           separating latents, k-sparse probes, examples                    08
5      ``sampling``          same-prompt temperature sampling                                 01
6      ``sae_training``      the SAE stage: one SAE per grid cell and seed, exported          04
6      ``sae_probes``        SAE probes against raw, per seed and without leakage             05
6      ``steering``          steering and ablation during sampling, re-judged                 09
6      ``autointerp``        latent labels from examples; the deception-label test            08
6      ``stage_costs``       per-stage costs of a run: throughput read from its outputs       make rehearsal
7      ``stages``            what each stage produces, and whether a run holds it             make book
7      ``ste_comparison``    STE JumpReLU vs TopK vs threshold-0 JumpReLU                     06
7      ``cost_model``        the expected cost of a full run on one GPU, from a rehearsal     make rehearsal
8      ``summary``           our numbers beside the study's                                   07
8      ``report``            host-proof facts and generated prose of a run                    05-07
8      ``grid_plan``         the grid's notebook executions, what each reads, what a run has  make book
9      ``grid``              runs the grid's notebooks with papermill, locally or on Dask     make book
9      ``publish``           one run's figures, notebooks and README section                  make publish
=====  ====================  ===============================================================  ============
"""
