"""Labels for completions: the keyword and Gemini judges, the labelling stage.

=================  ================================================================
module             concept
=================  ================================================================
``gemini``         the Gemini judge: prompt, answers, per-answer cache
``gemini_client``  a Gemini client: JSON answers, retries, the key guarded
``judges``         the judge interface and the keyword judge
``labelling``      the labelling stage, label counts, agreement
=================  ================================================================
"""
