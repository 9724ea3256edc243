"""deception-saes: the shared package of the research book.

One module per concept, on floors: a module imports only modules of lower floors, so the
package has no import circle, the SAE model never imports its trainer, and a reader can start
at the bottom. ``tests/test_architecture.py`` reads this table and checks the code against it.

=====  =====================  =========================================================  ========
floor  module                 concept                                                    notebook
=====  =====================  =========================================================  ========
0      ``config``             the typed run config and the book's vocabulary             all
0      ``stats``              metrics, bootstrap CIs, permutation tests, Holm            05, 06
0      ``runtime``            thread limits and progress bars
1      ``rundir``             the run directory: paths, atomic I/O, seeds, caches        all
1      ``scenarios``          the nine scenario prompts (``data/scenarios.yaml``)        01, 02
1      ``sae``                the SAE model and its SAELens on-disk format               04-06
1      ``logistic``           the exact fast solver of the study's probe                 05
1      ``style``              colours, names and saving of every figure                  all
1      ``latent_stats``       per-latent AUROC with CIs, q-values, held-out scenarios    08
2      ``organism``           the embedded model organism with planted behaviour         (default)
2      ``dataset``            activations joined with labels for later stages            04-07
2      ``judges``             the judge interface and the keyword judge                  02
2      ``sae_kernels``        the SAE trainer's hand-written step and fused Adam         04
2      ``probe``              the study's probe and its cross-validation                 05, 06
2      ``figures``            figures of stages 02-04                                    02-04
2      ``probe_figures``      figures of stages 05-06                                    05, 06
2      ``dashboard``          the self-contained HTML page of one SAE's latents          08
2      ``latent_figures``     figures of stages 08-09                                    08, 09
3      ``models``             loading causal LMs, decoder layers, residual hooks         01, 03
3      ``sampling``           same-prompt temperature sampling                           01
3      ``gemini``             the Gemini judge: client, retries, cache, key handling     02
3      ``sae_trainer``        training one SAE on a matrix of activations                04
3      ``controls``           permutation p-values, scenario-identity probe              05
3      ``sae_features``       SAE codes of completions on the SAE's own input kind       05-08
4      ``labelling``          the labelling stage, label counts, agreement               02
4      ``activations``        true resid_post capture of every layer                     03
4      ``sae_metrics``        FVU, L0, dead latents, LM loss with the SAE spliced in     04
4      ``layer_profile``      the layer profile stage and its controls                   05
4      ``leakage``            SAEs that never saw the probe's test completions           05
4      ``ste_comparison``     STE JumpReLU vs TopK vs threshold-0 JumpReLU               06
4      ``latents``            separating latents, k-sparse probes, examples              08
5      ``sae_training``       the SAE stage: one SAE per grid cell, exported             04
5      ``sae_probes``         SAE probes against raw, leakage-free SAE probes            05
5      ``steering``           steering and ablation during sampling, re-judged           09
5      ``autointerp``         latent labels from examples; the deception-label test      08
6      ``summary``            our numbers beside the study's                             07
7      ``grid``               papermill over the grid, locally or on Dask                make book
=====  =====================  =========================================================  ========
"""
