#!/usr/bin/env bash
# Train the embedded shapes model on one GPU machine: the commands that made omnidit/models/shapes.
#
#   bash tools/train_shapes_gpu.sh vae MINUTES      # the causal video VAE
#   bash tools/train_shapes_gpu.sh dit MINUTES      # the DiT on scenes rendered on the fly (resumes)
#   bash tools/train_shapes_gpu.sh export           # the DiT's EMA weights + the VAE as a model folder ($RUN/export-ema)
#   bash tools/train_shapes_gpu.sh distill MINUTES  # the 4-step consistency student of that teacher ($RUN/turbo)
#   bash tools/train_shapes_gpu.sh eval             # omnidit eval of student vs teacher ($RUN/eval.json)
#   bash tools/train_shapes_gpu.sh pack DIR         # export $WEIGHTS (ema raw) weights, tar them into DIR in 15 MB parts
#   bash tools/train_shapes_gpu.sh preflight        # 3 steps of every stage on a random model (catches GPU-only failures)
#   bash tools/train_shapes_gpu.sh all              # vae, dit, export, distill, eval in a row (VAE_MIN, DIT_MIN, DISTILL_MIN)
#                                                   # then teacher + student tarred into $RUN/fetch in 15 MB parts
#
# Each stage resumes from its checkpoint under $RUN. TE is a sentence-encoder folder: the packaged
# MiniLM by default; tools/pack_text_encoder.py writes a 21 MB copy that travels to a machine
# with no network. The CPU recipe is `make train-shapes`.
# The DiT stage alternates image and video batches (VIDEO_EVERY=1) and shifts the video batches'
# noise levels towards 1 (VIDEO_SHIFT=3): the shipped model, trained with VIDEO_EVERY=3 VIDEO_SHIFT=1
# (one video batch in four, no shift), learned motion without its direction (tools/motion_probe.py).
# GAN_WEIGHT > 0 adds the PatchGAN term to the VAE from GAN_START on (sharper small shapes; on the
# CPU a decoder-only fine-tune with it needed OBJECT_WEIGHT=3 to stop stray blobs: BENCHMARKS.md).
# SPATIAL=4 LATENT_CH=4 PATCH=2 builds a VAE with 16x16x4 latents per 64x64 frame and a DiT with
# 2x2 patches on them (still 64 tokens a frame): small shapes keep their corners in the latents.
# VAE=<folder> INIT_FROM=<model> fine-tunes an existing DiT on an existing VAE (skip the vae stage).
set -euo pipefail
RUN=${RUN:-runs/gpu}
VAE=${VAE:-$RUN/vae/vae}
TE=${TE:-.carry/minilm}
WORKERS=${WORKERS:-6}
WEIGHTS=${WEIGHTS:-ema raw}
PF_BATCH=${PF_BATCH:-256}
stage=$1
case "$stage" in
  vae)
    python3 -m omnidit train vae --out "$RUN/vae" --minutes "$2" --lr 2e-3 --images-per-step 64 \
      --clips-per-step 8 --workers "$WORKERS" --gan-weight "${GAN_WEIGHT:-0}" --gan-start "${GAN_START:-1000}" \
      --object-weight "${OBJECT_WEIGHT:-10}" --spatial-compression "${SPATIAL:-8}" --latent-channels "${LATENT_CH:-16}" ;;
  dit)
    python3 -m omnidit train dit --data online --vae "$VAE" --out "$RUN/dit" --minutes "$2" \
      ${PATCH:+--patch-size "$PATCH"} ${INIT_FROM:+--init-from "$INIT_FROM"} --lr "${LR:-6e-4}" --image-batch 256 --video-batch 32 --video-every "${VIDEO_EVERY:-1}" --video-shift "${VIDEO_SHIFT:-3}" \
      --workers "$WORKERS" --text-encoder "$TE" --eval-every 1000 --eval-n 64 ;;
  preflight)
    pf=${PF:-/tmp/omnidit-preflight}; rm -rf "$pf"
    python3 -c "import pathlib; from omnidit.training.vae_train import make_vae, export_vae; export_vae(make_vae(None, ${SPATIAL:-8}, ${LATENT_CH:-16}), pathlib.Path('$pf/vae'), n=32)"
    python3 -m omnidit train vae --init-from "$pf/vae" --decoder-only --out "$pf/vae-gan" --steps 3 --gan-weight 0.02 \
      --gan-start 1 --images-per-step 8 --clips-per-step 1
    python3 -m omnidit train dit --data online --vae "$pf/vae" --out "$pf/dit" --steps 3 --image-batch "$PF_BATCH" ${PATCH:+--patch-size "$PATCH"} \
      --video-batch $((PF_BATCH / 8)) --video-every 1 --video-shift 3 --workers 2 --text-encoder "$TE" --eval-every 3 --eval-n 4
    python3 -m omnidit train export --checkpoint "$pf/dit/checkpoint.pt" --vae "$pf/vae" --out "$pf/teacher" --weights raw
    python3 -m omnidit distill --teacher "$pf/teacher" --data online --max-steps 3 --image-batch "$PF_BATCH" \
      --video-batch $((PF_BATCH / 8)) --video-every 1 --workers 2 --text-encoder "$TE" --eval-every 3 --eval-n 4 \
      --out "$pf/student"
    python3 -m omnidit eval --model "$pf/student" --teacher "$pf/teacher" --n 2 --videos 1 --device cuda --text-encoder "$TE" ;;
  export)
    python3 -m omnidit train export --checkpoint "$RUN/dit/checkpoint.pt" --vae "$VAE" --out "$RUN/export-ema" --weights ema
    cp "$RUN/dit/metrics.jsonl" "$RUN/export-ema/dit-metrics.jsonl"
    if [ -f "$RUN/vae/metrics.jsonl" ]; then cp "$RUN/vae/metrics.jsonl" "$RUN/export-ema/vae-metrics.jsonl"; fi ;;
  distill)
    python3 -m omnidit distill --teacher "$RUN/export-ema" --method consistency --steps 4 --lr 2e-4 --minutes "$2" \
      --data online --image-batch 256 --video-batch 32 --video-every 1 --workers "$WORKERS" --text-encoder "$TE" \
      --eval-every 200 --eval-n 64 --out "$RUN/turbo"
    cp "$RUN/turbo.run/metrics.jsonl" "$RUN/turbo/distill-metrics.jsonl" ;;
  eval)
    python3 -m omnidit eval --model "$RUN/turbo" --teacher "$RUN/export-ema" --n 200 --videos 100 --batch-size 50 \
      --device cuda --text-encoder "$TE" --json "$RUN/eval.json" ;;
  pack)
    out=$2
    for w in $WEIGHTS; do
      python3 -m omnidit train export --checkpoint "$RUN/dit/checkpoint.pt" --vae "$VAE" \
        --out "$RUN/export-$w" --weights "$w"
    done
    cp "$RUN/dit/metrics.jsonl" "$RUN/export-ema/dit-metrics.jsonl"
    if [ -f "$RUN/vae/metrics.jsonl" ]; then cp "$RUN/vae/metrics.jsonl" "$RUN/export-ema/vae-metrics.jsonl"; fi
    tar -C "$RUN" -cf - $(for w in $WEIGHTS; do echo "export-$w"; done) | split -b 15m - "$out/model.tar.part-" ;;
  all)
    # One lent GPU session's release, unattended (start it with setsid and poll $RUN): the next
    # release is the 4x VAE + 2x2-patch DiT, SPATIAL=4 LATENT_CH=4 PATCH=2 (BENCHMARKS.md).
    bash "$0" vae "${VAE_MIN:-3}"
    bash "$0" dit "${DIT_MIN:-20}"
    bash "$0" export
    bash "$0" distill "${DISTILL_MIN:-4}"
    bash "$0" eval
    mkdir -p "$RUN/fetch"
    tar -C "$RUN" -cf - export-ema turbo eval.json | split -b 15m - "$RUN/fetch/models.tar.part-" ;;
  *)
    echo "usage: $0 vae MINUTES | dit MINUTES | export | distill MINUTES | eval | pack DIR | preflight | all" >&2; exit 2 ;;
esac
