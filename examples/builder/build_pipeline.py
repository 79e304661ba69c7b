"""The hello-pipeline, defined in Python with retries and timeouts.

    python examples/builder/build_pipeline.py > pipeline.json
    dagnats workflow register pipeline.json

Run the workers of examples/hello-pipeline/worker.py against it as usual.
"""

from dagnats.domain.builder import WorkflowBuilder


def hello_pipeline():
    b = WorkflowBuilder("hello-pipeline").version("1.1")
    b.description("greet -> uppercase -> reverse, with retries and timeouts")
    b.with_timeout("5m")  # the whole run
    b.with_default_retry(max_attempts=2, strategy="fixed", initial_delay="1s")

    greet = (
        b.task("greet", "greet")
        .with_timeout(10)  # each attempt, in seconds
        .with_retry(max_attempts=5, strategy="exponential", initial_delay="500ms", max_delay="10s", multiplier=2.0)
    )
    upper = b.task("uppercase", "uppercase").after(greet).with_timeout("5s")
    b.task("reverse", "reverse").after(upper).with_timeout("5s").with_retries(3)
    return b


if __name__ == "__main__":
    print(hello_pipeline().to_json().decode())
