"""The shapes task: generated clips with known answers, and the small LLaVA trained on them.

    clips      the generator: clips of coloured shapes, their questions, captions and object patches; plain clips
    model      the small LLaVA-1.5 (architecture, tokenizer, training examples) and its committed checkpoint
    training   LLaVA's stages on generated clips (jobs/train_shapes.py runs them)
    checkpoint/  the trained model, loaded as flashvlm.load("flashvlm-tiny/shapes")

A user of the library (flashvlm); it never imports the pipeline, which uses it for demo inputs and labels.
"""
