"""Data: from a data dir (or a generator, JSON lines, TFDS, any SeqIO source) to paired batches.

    schema                  the batch schema: stream names, `packed`, stream ids, feature keys, prefixes
    records/                what a data dir (or a generator) holds
        formats             the paper's record formats and teacher-output parsing per dataset
        data_dir            reading and validating the official layout, attaching parsed teacher outputs
        teacher_samples     the several-rationales layout llm/<split>_samples.jsonl
        output_parsing      the one teacher-output parser, driven by a template's parse spec
        datasets            dataset name -> splits: paper formats from a data dir, generated datasets (arith)
        arith               the embedded quickstart task's generator
        report              `sbs data check`
    registry/               SeqIO registration
        register            task registration in the variants D_sbs, D_sbs_llm, D_ft, D_distill
        memory_source       in-memory seqio.DataSource over parsed examples
        preprocessors       label stream (`predict: `) and rationale stream (`explain: `) features
        prefixes            which prefixes a variant gets (no TensorFlow import)
        splits / selection  seeded validation carve-out, training fractions, the selection manifest
        rationale_filters   counted rationale filters at registration
        rationale_rows      one source row per (example, rationale); rationale_sampling
        tfds_examples       a TFDS source read into memory (for filters)
    vocab/                  vocabularies and text
        sentencepiece_vocab SentencePiece vocabularies with T5's ids, `sbs vocab train`
        t5_vocabulary       SentencePiece vocabulary that reads the literal `</s>` as EOS (eos_marker)
        codec               text -> encoder rows, decoded rows -> text (evaluation, `sbs infer`, serving)
    input_pipeline/         registered tasks -> training batches
        pipeline            get_train_dataset / train_batches / get_eval_examples for trainer and evaluation
        feature_converter   paired encoder-decoder arrays
        packing             packed training rows, one segment per (example, stream)
        host_pipeline       the numpy back end of pipeline.train_batches (tokenize once, order, plan units)
        host_kernels        its numpy row building (unpacked rows, packing windows), in-thread or in workers
        host_workers        its worker processes (host_worker: numpy only), results in unit order
        rationale_picking   which rationale an epoch trains on: a hash of (seed, epoch, example)
    scoring/
        metrics             exact-match and equation-value accuracy (safe arithmetic parser)

Submodules are imported on demand: SeqIO and TensorFlow take seconds to import. The subpackages'
`__init__` files import nothing, so `codec`, `prefixes`, `eos_marker` and `schema` stay TensorFlow-free.
"""
