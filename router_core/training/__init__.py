"""Mask learning (S3-Router), the weight-finetuning baseline, evaluation, export and mask analysis."""
