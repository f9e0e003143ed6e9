"""Data: from a data dir (or a generator, JSON lines, TFDS, any SeqIO source) to paired batches.

    schema              the batch schema: stream names, `packed`, stream ids, feature keys, prefixes
    codec               text -> encoder rows, decoded rows -> text (evaluation, `sbs infer`, serving)
    output_parsing      the one teacher-output parser, driven by a template's parse spec
    formats / records   the paper's record formats, teacher-output parsing, reading the official layout
    splits              seeded validation carve-out and nested training fractions
    sources             in-memory seqio.DataSource over parsed examples
    preprocessors       label stream (`predict: `) and rationale stream (`explain: `) features
    register            task registration in the variants D_sbs, D_sbs_llm, D_ft, D_distill
    feature_converter   paired encoder-decoder arrays
    packing             packed training rows, one segment per (example, stream)
    pipeline            get_train_dataset / get_eval_examples (arrays) for the trainer and evaluation
    host_pipeline       the numpy back end of pipeline.train_batches (tokenize once, order, plan units)
    host_kernels        its numpy row building (unpacked rows, packing windows), in-thread or in workers
    host_workers        its worker processes (host_worker: numpy only), results in unit order
    metrics             exact-match and equation-value accuracy (safe arithmetic parser)
    vocab               SentencePiece vocabularies, `sbs vocab train`
    report              `sbs data check`
    datasets            dataset name -> splits: paper formats from a data dir, generated datasets (arith)
    arith               the embedded quickstart task's generator

Submodules are imported on demand: SeqIO and TensorFlow take seconds to import.
"""
