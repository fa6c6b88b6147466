from edgeprune.data.texts import calibration_texts, eval_text

__all__ = ["calibration_texts", "eval_text"]
